-- claim_outbox: take one callback to dispatch, pushing its outbox entry out to `retry at` so
-- no other dispatcher takes it meanwhile.
--
-- KEYS[1]    {p}:outbox         callbacks due for dispatch
-- KEYS[2]    {p}:x:{tid}        the record
--
-- ARGV[1]    tid
-- ARGV[2]    now
-- ARGV[3]    retry at           when the callback is dispatched again if this one is lost
--
-- Returns the record (HGETALL; empty if it is gone), or nil if another dispatcher has it.

local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return redis.call('HGETALL', KEYS[2])
