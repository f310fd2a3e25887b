-- piece admit_fn: the backlog bound's share and admission of one message.
--! include forget_message
local function share_of(P, acct, cap)
  local busy = redis.call('HLEN', P .. 'flight_n')
  for _, w in ipairs(redis.call('SMEMBERS', P .. 'waiting')) do
    if redis.call('HEXISTS', P .. 'flight_n', w) == 0 then busy = busy + 1 end
  end
  if redis.call('HEXISTS', P .. 'flight_n', acct) == 0
      and redis.call('SISMEMBER', P .. 'waiting', acct) == 0 then
    busy = busy + 1
  end
  return math.max(1, math.floor(cap / busy))
end
local function admit(P, acct, now, cap, share, due, first)
  local by = math.max(now, due)
  local total = redis.call('ZCOUNT', P .. 'flight', '-inf', by)
  local mine = redis.call('ZCOUNT', P .. 'flight:' .. acct, '-inf', by)
  if mine == 0 or (total < cap and mine < share) then
    count_message(P, acct, first, due)
    return true
  end
  redis.call('SADD', P .. 'waiting', acct)
  redis.call('HINCRBY', P .. 'metrics', 'parked|' .. acct, 1)
  return false
end
