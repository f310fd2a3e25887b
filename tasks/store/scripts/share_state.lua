-- share_state: the fair sweep's view of the backlog.
-- KEYS[1] {p}:flight
-- ARGV: now, "{p}:", grace.

--! include forget_message
local now, P = tonumber(ARGV[1]), ARGV[2]
forget_lost(P, now - tonumber(ARGV[3]))
local out = {redis.call('ZCOUNT', P .. 'flight', '-inf', now)}
for _, acct in ipairs(redis.call('SMEMBERS', P .. 'accounts')) do
  local due = P .. 'due:' .. acct
  local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('SREM', P .. 'accounts', acct)
    redis.call('SREM', P .. 'waiting', acct)
    redis.call('HDEL', P .. 'metrics', 'lag|' .. acct)
  else
    local lag = math.max(0, now - tonumber(head[2]))
    redis.call('HSET', P .. 'metrics', 'lag|' .. acct, string.format('%.3f', lag))
    local waiting = redis.call('ZCOUNT', due, '-inf', now)
    if waiting == 0 then redis.call('SREM', P .. 'waiting', acct) end
    out[#out + 1] = acct
    out[#out + 1] = waiting
    out[#out + 1] = redis.call('ZCOUNT', P .. 'flight:' .. acct, '-inf', now)
  end
end
return out
