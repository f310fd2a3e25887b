-- piece ledger: the broker backlog ledger. A poll message handed to the broker is counted, by
-- its first export, in {p}:flight ("acct|tid" -> due time), the account's {p}:flight:{acct}
-- (tid -> due time) and {p}:flight_n (acct -> count) until a worker starts it, or `grace`
-- after its due time (lost with a worker: the sweep rescues its exports anyway).
-- `k` holds key names from the calling script's KEYS: flight, flight_n, deferred, and for
-- count_message the account's ledger zset (flight_of), settled first (see deferred).
--! include deferred

local function forget_message(k, acct, tid)
  if redis.call('ZREM', k.flight, acct .. '|' .. tid) == 1 then
    defer_gone(k, acct, tid)
    if redis.call('HINCRBY', k.flight_n, acct, -1) <= 0 then
      redis.call('HDEL', k.flight_n, acct)
    end
  end
end

local function forget_lost(k, before)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', k.flight, '-inf', before, 'LIMIT', 0, 500)) do
    local acct, tid = string.match(m, '^(.*)|([^|]*)$')
    forget_message(k, acct, tid)
  end
end

local function count_message(k, acct, tid, due)
  if redis.call('ZADD', k.flight, due, acct .. '|' .. tid) == 1 then
    redis.call('HINCRBY', k.flight_n, acct, 1)
  end
  redis.call('ZADD', k.flight_of, due, tid)
end
