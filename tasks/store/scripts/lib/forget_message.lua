-- piece forget_message: the broker backlog ledger's functions; P is the key prefix ("ep:").
local function forget_message(P, acct, tid)
  if redis.call('ZREM', P .. 'flight', acct .. '|' .. tid) == 1 then
    redis.call('ZREM', P .. 'flight:' .. acct, tid)
    if redis.call('HINCRBY', P .. 'flight_n', acct, -1) <= 0 then
      redis.call('HDEL', P .. 'flight_n', acct)
    end
  end
end
local function forget_lost(P, before)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'flight', '-inf', before, 'LIMIT', 0, 500)) do
    local acct, tid = string.match(m, '^(.*)|([^|]*)$')
    forget_message(P, acct, tid)
  end
end
local function count_message(P, acct, tid, due)
  if redis.call('ZADD', P .. 'flight', due, acct .. '|' .. tid) == 1 then
    redis.call('HINCRBY', P .. 'flight_n', acct, 1)
  end
  redis.call('ZADD', P .. 'flight:' .. acct, due, tid)
end
