-- note_finished: a finished export answered again (`refresh`) or its callback sent again
-- (`redeliver`): only a finished record changes, and the counter says how often.
--
-- KEYS[1]    {p}:x:{tid}        the record
--
-- ARGV[1]    counter            the field counting the event
-- ARGV[2..]  name, value, ...   fields to write
--
-- Returns the counter's new value, or -1 if the record is missing or still active.

--! include active

local state = redis.call('HGET', KEYS[1], 'state')
if not state or is_active(state) then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
