-- piece move: the metrics hash's active/finished counts follow a change of state.
local function move(metrics, provider, old, new)
  if old == new then return end
  if old == 'pending' or old == 'running' then
    redis.call('HINCRBY', metrics, 'active|' .. provider .. '|' .. old, -1)
  end
  if new == 'pending' or new == 'running' then
    redis.call('HINCRBY', metrics, 'active|' .. provider .. '|' .. new, 1)
  else
    redis.call('HINCRBY', metrics, 'finished|' .. provider .. '|' .. new, 1)
  end
end
