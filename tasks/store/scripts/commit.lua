-- commit: write one poll's result while its claim holds.
-- KEYS[1] the record, KEYS[2] {p}:sched, KEYS[3] {p}:outbox
-- ARGV: tid, claim id, terminal, sched score, now, new token, "{p}:", next_poll_at, outcome,
-- then field pairs.

--! include move
local before = redis.call('HMGET', KEYS[1], 'claim', 'state', 'provider')
if before[1] ~= ARGV[2] then return 0 end
local P = ARGV[7]
redis.call('HDEL', KEYS[1], 'claim', 'lease_until', 'not_before')
redis.call('HSET', KEYS[1], 'token', ARGV[6], unpack(ARGV, 10))
redis.call('HINCRBY', P .. 'metrics', 'polls|' .. before[3] .. '|' .. ARGV[9], 1)
move(P .. 'metrics', before[3], before[2], redis.call('HGET', KEYS[1], 'state'))
if ARGV[3] == '1' then
--! include finish_tail
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('ZADD', P .. 'due:' .. redis.call('HGET', KEYS[1], 'account'), ARGV[8], ARGV[1])
end
return 1
