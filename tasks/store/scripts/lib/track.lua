-- piece track: a new record and its first poll's admission (inline code, see track.lua).
--! include admit_fn
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if existing then
  local state = redis.call('HGET', ARGV[5] .. existing, 'state')
  if state == 'pending' or state == 'running' then return {0, existing, 0} end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
local provider = redis.call('HGET', KEYS[2], 'provider')
redis.call('HINCRBY', KEYS[4], 'active|' .. provider .. '|pending', 1)
local account, cap = redis.call('HGET', KEYS[2], 'account'), tonumber(ARGV[6])
redis.call('SADD', KEYS[6], account)
if cap == 0 then return {1, ARGV[1], 1} end
local P, now = string.sub(ARGV[5], 1, -3), tonumber(ARGV[4])
forget_lost(P, now - tonumber(ARGV[7]))
if admit(P, account, now, cap, share_of(P, account, cap), now, ARGV[1]) then
  return {1, ARGV[1], 1}
end
redis.call('ZADD', KEYS[3], now, ARGV[1])  -- parked, due now: the fair sweep sends it
return {1, ARGV[1], 0}
