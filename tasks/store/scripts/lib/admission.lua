-- piece admission: hand polls to the broker only while it holds little ready work
-- (policy.admits, applied in the round trip that hands a train over): at the message's due
-- time, fewer than `cap` messages of the fleet and fewer than the account's share (cap /
-- accounts in flight or waiting) ready, or none of the account's own. A message turned away is
-- parked by the caller, and the account waits for the fair sweep.
-- `k` holds key names from the calling script's KEYS: the ledger's (see ledger), waiting and
-- metrics.
--! include ledger

local function share_of(k, acct, cap)
  local busy = redis.call('HLEN', k.flight_n)
  for _, w in ipairs(redis.call('SMEMBERS', k.waiting)) do
    if redis.call('HEXISTS', k.flight_n, w) == 0 then busy = busy + 1 end
  end
  if redis.call('HEXISTS', k.flight_n, acct) == 0
      and redis.call('SISMEMBER', k.waiting, acct) == 0 then
    busy = busy + 1
  end
  return math.max(1, math.floor(cap / busy))
end

local function admit_message(k, acct, now, cap, share, due, first)
  local by = math.max(now, due)
  local total = redis.call('ZCOUNT', k.flight, '-inf', by)
  local mine = redis.call('ZCOUNT', k.flight_of, '-inf', by)
  if mine == 0 or (total < cap and mine < share) then
    count_message(k, acct, first, due)
    return true
  end
  redis.call('SADD', k.waiting, acct)
  redis.call('HINCRBY', k.metrics, 'parked|' .. acct, 1)
  return false
end
