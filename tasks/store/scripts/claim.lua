-- claim: take the poll lease of each export a poll message names, or say why not.
--
-- KEYS[1]    {p}:sched          the schedule: a claimed export's entry moves to its lease's end
-- KEYS[2]    {p}:flight         the backlog ledger: the message has left the broker
-- KEYS[3]    {p}:flight_n       messages in the broker per account
-- KEYS[4]    {p}:due:{acct}     the message's account's due index: a claimed export waits at
--                               its lease's end there too
-- KEYS[5]    {p}:flight:{acct}  the account's messages in the ledger
-- KEYS[6..]  {p}:x:{tid}        the record of each (tid, token) pair, in ARGV's order
--
-- ARGV[1]    now
-- ARGV[2]    lease_until        when the lease ends
-- ARGV[3]    claim id           names this poll run's leases
-- ARGV[4]    early              seconds our own backoff lets a poll run before its planned time
-- ARGV[5]    account            the account the message names (a message is one account's)
-- ARGV[6..]  tid, token, ...    the message's exports; the ledger counted it by the first
--
-- Returns, per pair, the record (HGETALL) if claimed, else why not: missing, misrouted (the
-- record is another account's: nothing is written for it), stale, done, busy, early, or
-- wait:<time> (a provider's stated not-before, a hard floor).

--! include active
--! include ledger

local now, acct = tonumber(ARGV[1]), ARGV[5]

local function why_not(v, token)
  if not v[1] then return 'missing' end
  if v[5] ~= acct then return 'misrouted' end
  if v[1] ~= token then return 'stale' end
  if not is_active(v[2]) then return 'done' end
  if v[3] and tonumber(v[3]) > now then return 'busy' end
  if v[6] and tonumber(v[6]) > now then return 'wait:' .. v[6] end
  if v[4] and tonumber(v[4]) > now + tonumber(ARGV[4]) then return 'early' end
  return nil
end

-- the message has left the broker: no longer in its backlog
forget_message({flight = KEYS[2], flight_n = KEYS[3], flight_of = KEYS[5]}, acct, ARGV[6])
local out = {}
for i = 6, #ARGV, 2 do
  local tid, key = ARGV[i], KEYS[(i + 6) / 2]
  local v = redis.call(
    'HMGET', key, 'token', 'state', 'lease_until', 'next_poll_at', 'account', 'not_before')
  local why = why_not(v, ARGV[i + 1])
  if why then
    out[#out + 1] = why
  else
    redis.call('HSET', key, 'lease_until', ARGV[2], 'claim', ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[2], tid)
    redis.call('ZADD', KEYS[4], ARGV[2], tid)
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
