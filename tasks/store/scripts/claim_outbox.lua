-- claim_outbox: take one callback to dispatch.
-- KEYS[1] {p}:outbox, KEYS[2] the record
-- ARGV: tid, now, retry at.

local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return redis.call('HGETALL', KEYS[2])
