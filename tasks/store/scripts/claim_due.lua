-- claim_due: take up to `limit` more due polls of one account.
-- KEYS[1] {p}:due:{acct}, KEYS[2] {p}:sched
-- ARGV: now, lease_until, claim id, limit, "{p}:x:", due by.

local limit = tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[6], 'LIMIT', 0, 2 * limit)
local out = {}
for _, tid in ipairs(due) do
  if #out >= 2 * limit then break end
  local key = ARGV[5] .. tid
  local v = redis.call('HMGET', key, 'state', 'lease_until', 'not_before')
  if v[1] ~= 'pending' and v[1] ~= 'running' then
    redis.call('ZREM', KEYS[1], tid)
  elseif v[2] and tonumber(v[2]) > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], v[2], tid)
  elseif v[3] and tonumber(v[3]) > tonumber(ARGV[1]) then
    -- a provider's stated time: not taken along early, and moved to that time so it does not
    -- sit at the head of the index in front of exports that are due
    redis.call('ZADD', KEYS[1], v[3], tid)
  else
    redis.call('HSET', key, 'lease_until', ARGV[2], 'claim', ARGV[3])
    redis.call('ZADD', KEYS[2], ARGV[2], tid)
    redis.call('ZADD', KEYS[1], ARGV[2], tid)
    out[#out + 1] = tid
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
