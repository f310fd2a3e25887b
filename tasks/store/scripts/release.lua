-- release: give back claims a poll took but did not get to.
-- KEYS[1] {p}:sched
-- ARGV: claim id, rescue time, "{p}:", then the tids.

for i = 4, #ARGV do
  local key = ARGV[3] .. 'x:' .. ARGV[i]
  local v = redis.call('HMGET', key, 'claim', 'account', 'next_poll_at')
  if v[1] == ARGV[1] then
    redis.call('HDEL', key, 'claim', 'lease_until')
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    redis.call('ZADD', ARGV[3] .. 'due:' .. v[2], tonumber(v[3]) or 0, ARGV[i])
  end
end
return 1
