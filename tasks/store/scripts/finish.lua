-- finish: force an active export into a terminal state.
-- KEYS[1] the record, KEYS[2] {p}:sched, KEYS[3] {p}:outbox
-- ARGV: tid, state, now, notify, respect lease, ttl, "{p}:", then field pairs.

--! include move
local v = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'provider')
if v[1] ~= 'pending' and v[1] ~= 'running' then return 0 end
if ARGV[5] == '1' and v[2] and tonumber(v[2]) > tonumber(ARGV[3]) then return 0 end
local P = ARGV[7]
redis.call('HDEL', KEYS[1], 'claim', 'lease_until')
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'token', '', unpack(ARGV, 8))
move(P .. 'metrics', v[3], v[1], ARGV[2])

--! include finish_tail
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
return 1
