-- due: exports past their deadline, re-armed for rescue; other due accounts noted.
-- KEYS[1] {p}:sched, KEYS[2] {p}:accounts
-- ARGV: now, rescue time, limit, "{p}:x:", grace.

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local expired = {}
for _, tid in ipairs(due) do
  local v = redis.call('HMGET', ARGV[4] .. tid, 'token', 'deadline', 'account')
  if not v[1] or v[1] == '' then
    redis.call('ZREM', KEYS[1], tid)
  else
    if tonumber(v[2]) + tonumber(ARGV[5]) < tonumber(ARGV[1]) then
      redis.call('ZADD', KEYS[1], ARGV[2], tid)
      expired[#expired + 1] = tid
    else  -- sent by the fair sweep, from its account's due index
      redis.call('SADD', KEYS[2], v[3])
    end
  end
end
return expired
