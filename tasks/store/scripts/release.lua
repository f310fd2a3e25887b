-- release: give back claims a poll run took but did not get to; their tokens stay valid.
--
-- KEYS[1]    {p}:sched          the schedule: each export is rescued at ARGV[2] if not re-sent
-- KEYS[2]    {p}:due:{acct}     the claims' account's due index: back at its next poll time
-- KEYS[3..]  {p}:x:{tid}        the record of each claim, in ARGV's order
--
-- ARGV[1]    claim id           only leases of this claim are given back
-- ARGV[2]    rescue time
-- ARGV[3..]  tid, ...           the claims' tracking ids

for i = 3, #ARGV do
  local key = KEYS[i]
  local v = redis.call('HMGET', key, 'claim', 'next_poll_at')
  if v[1] == ARGV[1] then
    redis.call('HDEL', key, 'claim', 'lease_until')
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    redis.call('ZADD', KEYS[2], tonumber(v[2]) or 0, ARGV[i])
  end
end
return 1
