-- piece move_state: the metrics hash's active and finished counts follow every change of
-- state. Takes the metrics hash's name from the calling script's KEYS.
--! include active
local function move_state(metrics, provider, old, new)
  if old == new then return end
  if is_active(old) then
    redis.call('HINCRBY', metrics, 'active|' .. provider .. '|' .. old, -1)
  end
  if is_active(new) then
    redis.call('HINCRBY', metrics, 'active|' .. provider .. '|' .. new, 1)
  else
    redis.call('HINCRBY', metrics, 'finished|' .. provider .. '|' .. new, 1)
  end
end
