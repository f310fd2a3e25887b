-- commit: write one poll's result if its claim still holds; a terminal result ends the
-- tracking and fills the outbox.
--
-- KEYS[1]    {p}:x:{tid}        the record
-- KEYS[2]    {p}:sched          the schedule: the next poll's time (or rescue time)
-- KEYS[3]    {p}:outbox         a terminal result's callback is due now
-- KEYS[4]    {p}:metrics        polls by outcome, active and finished counts
-- KEYS[5]    {p}:idem           a terminal result gives the (account, export id) back
-- KEYS[6]    {p}:due:{acct}     the account's due index: the next poll's time
--
-- ARGV[1]    tid
-- ARGV[2]    claim id           the poll's claim; nothing is written if the record's differs
-- ARGV[3]    terminal           "1" if the export has finished
-- ARGV[4]    sched score        the schedule's time for the next look (non-terminal)
-- ARGV[5]    now
-- ARGV[6]    new token          the next poll message's token ("" when terminal)
-- ARGV[7]    next_poll_at       the due index's time for the next poll (non-terminal)
-- ARGV[8]    outcome            what the provider said, for the polls counter
-- ARGV[9..]  name, value, ...   the record's new fields
--
-- Returns 1 if written, 0 if the claim no longer holds.

--! include move_state
--! include end_tracking

local before = redis.call('HMGET', KEYS[1], 'claim', 'state', 'provider')
if before[1] ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], 'claim', 'lease_until', 'not_before')
redis.call('HSET', KEYS[1], 'token', ARGV[6], unpack(ARGV, 9))
redis.call('HINCRBY', KEYS[4], 'polls|' .. before[3] .. '|' .. ARGV[8], 1)
move_state(KEYS[4], before[3], before[2], redis.call('HGET', KEYS[1], 'state'))
if ARGV[3] == '1' then
  end_tracking(KEYS[1], KEYS[2], KEYS[6], KEYS[5], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('ZADD', KEYS[6], ARGV[7], ARGV[1])
end
return 1
