-- piece tracking: track(), a new record and the admission of its first poll in the same round
-- trip, for track.lua and track_as.lua, which share their KEYS and ARGV (see track.lua).
--! include active
--! include admission

local function track()
  local existing = redis.call('HGET', KEYS[1], ARGV[2])
  if existing and existing ~= ARGV[7] then return {-1, existing, 0} end
  if existing and is_active(redis.call('HGET', KEYS[11], 'state')) then
    return {0, existing, 0}
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[2], unpack(ARGV, 8))
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
  local provider = redis.call('HGET', KEYS[2], 'provider')
  redis.call('HINCRBY', KEYS[4], 'active|' .. provider .. '|pending', 1)
  local account, cap = redis.call('HGET', KEYS[2], 'account'), tonumber(ARGV[5])
  redis.call('SADD', KEYS[5], account)
  if cap == 0 then return {1, ARGV[1], 1} end
  local k = {
    metrics = KEYS[4], flight = KEYS[7], flight_n = KEYS[8],
    flight_of = KEYS[9], waiting = KEYS[10],
  }
  local now = tonumber(ARGV[4])
  forget_lost(k, now - tonumber(ARGV[6]))
  if admit_message(k, account, now, cap, share_of(k, account, cap), now, ARGV[1]) then
    return {1, ARGV[1], 1}
  end
  redis.call('ZADD', KEYS[3], now, ARGV[1])  -- parked, due now: the fair sweep sends it
  return {1, ARGV[1], 0}
end
