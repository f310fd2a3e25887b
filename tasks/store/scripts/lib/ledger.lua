-- piece ledger: the broker backlog ledger. A poll message handed to the broker is counted, by
-- its first export, in {p}:flight ("acct|tid" -> due time), the account's {p}:flight:{acct}
-- (tid -> due time) and {p}:flight_n (acct -> count) until a worker starts it, or `grace`
-- after its due time (lost with a worker: the sweep rescues its exports anyway).
-- `k` holds key names from the calling script's KEYS: flight, flight_n, and the account's
-- ledger zset (flight_of) where the script has it.

local function forget_message(k, acct, tid)
  if redis.call('ZREM', k.flight, acct .. '|' .. tid) == 1 then
    if redis.call('HINCRBY', k.flight_n, acct, -1) <= 0 then
      redis.call('HDEL', k.flight_n, acct)
    end
  end
  if k.flight_of then redis.call('ZREM', k.flight_of, tid) end
end

-- Lost messages leave the fleet-wide ledger here; an account's own zset drops them (by the
-- same due times) in the next script that holds it: this one's, the sweep's view of each.
local function forget_lost_of(flight_of, before)
  redis.call('ZREMRANGEBYSCORE', flight_of, '-inf', before)
end

local function forget_lost(k, before)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', k.flight, '-inf', before, 'LIMIT', 0, 500)) do
    local acct, tid = string.match(m, '^(.*)|([^|]*)$')
    forget_message({flight = k.flight, flight_n = k.flight_n}, acct, tid)
  end
  if k.flight_of then forget_lost_of(k.flight_of, before) end
end

local function count_message(k, acct, tid, due)
  if redis.call('ZADD', k.flight, due, acct .. '|' .. tid) == 1 then
    redis.call('HINCRBY', k.flight_n, acct, 1)
  end
  redis.call('ZADD', k.flight_of, due, tid)
  redis.call('PERSIST', k.flight_of)  -- see share_state.lua: a quiet account's zset expires
end

-- An account that leaves the sweep's round (no active export) may still have messages counted
-- in its zset: the zset expires when the last of them would count as lost, so a quiet account
-- leaves nothing behind (count_message keeps it again when the account comes back).
local function expire_when_lost(flight_of, grace)
  local last = redis.call('ZRANGE', flight_of, -1, -1, 'WITHSCORES')
  if #last > 0 then
    local at = string.format('%.0f', math.ceil((tonumber(last[2]) + grace) * 1000))
    redis.call('PEXPIREAT', flight_of, at)
  end
end
