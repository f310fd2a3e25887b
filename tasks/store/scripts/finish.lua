-- finish: force an active export into a terminal state (cancel, deadline expiry).
--
-- KEYS[1]    {p}:x:{tid}        the record
-- KEYS[2]    {p}:sched          the schedule: the export leaves it
-- KEYS[3]    {p}:outbox         with notify, its callback is due now
-- KEYS[4]    {p}:metrics        active and finished counts
-- KEYS[5]    {p}:idem           the (account, export id) is given back
-- KEYS[6]    {p}:due:{acct}     the account's due index: the export leaves it
--
-- ARGV[1]    tid
-- ARGV[2]    state              the terminal state
-- ARGV[3]    now
-- ARGV[4]    notify             "1": fill the outbox; else the record expires after ARGV[6]
-- ARGV[5]    respect lease      "1": leave an export a poll holds the lease of
-- ARGV[6]    ttl                seconds a finished record is kept without a callback
-- ARGV[7]    account            the record's account as the caller read it
-- ARGV[8..]  name, value, ...   the record's new fields
--
-- Returns 1 if finished, 0 if not active (or leased, with ARGV[5]), -1 if the record's account
-- is not ARGV[7] (the caller reads it again).

--! include move_state
--! include end_tracking

local v = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'provider', 'account')
if not is_active(v[1]) then return 0 end
if v[4] ~= ARGV[7] then return -1 end
if ARGV[5] == '1' and v[2] and tonumber(v[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[1], 'claim', 'lease_until')
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'token', '', unpack(ARGV, 8))
move_state(KEYS[4], v[3], v[1], ARGV[2])
end_tracking(KEYS[1], KEYS[2], KEYS[6], KEYS[5], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
return 1
