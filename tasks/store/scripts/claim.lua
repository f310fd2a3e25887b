-- claim: take the poll lease of each export a message names, or say why not.
-- KEYS[1] {p}:sched
-- ARGV: now, lease_until, claim id, how early a poll may run, "{p}:", then tid/token pairs.

--! include forget_message
local now, out = tonumber(ARGV[1]), {}
for i = 6, #ARGV, 2 do
  local tid, key = ARGV[i], ARGV[5] .. 'x:' .. ARGV[i]
  local v = redis.call(
    'HMGET', key, 'token', 'state', 'lease_until', 'next_poll_at', 'account', 'not_before')
  local why = nil
  if not v[1] then why = 'missing'
  elseif v[1] ~= ARGV[i + 1] then why = 'stale'
  elseif v[2] ~= 'pending' and v[2] ~= 'running' then why = 'done'
  elseif v[3] and tonumber(v[3]) > now then why = 'busy'
  elseif v[6] and tonumber(v[6]) > now then why = 'wait:' .. v[6]
  elseif v[4] and tonumber(v[4]) > now + tonumber(ARGV[4]) then why = 'early'
  end
  if i == 6 and v[5] then  -- the message has left the broker: no longer in its backlog
    forget_message(ARGV[5], v[5], tid)
  end
  if why then
    out[#out + 1] = why
  else
    redis.call('HSET', key, 'lease_until', ARGV[2], 'claim', ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[2], tid)
    redis.call('ZADD', ARGV[5] .. 'due:' .. v[5], ARGV[2], tid)
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
