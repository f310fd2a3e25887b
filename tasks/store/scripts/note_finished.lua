-- note_finished: write fields on a finished record and count the event.
-- KEYS[1] the record
-- ARGV: counter field, then field pairs.

local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'pending' or state == 'running' then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
