-- track_as: `track` under a caller-chosen id.
-- KEYS and ARGV: as track.lua.

local taken = redis.call('HGET', KEYS[2], 'idem')
if taken then
  if taken == ARGV[2] then return {0, ARGV[1], 0} end
  return {0, '', 0}
end
--! include track
