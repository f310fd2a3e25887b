-- take_due: each account's share of due polls, earliest first.
-- KEYS[1] {p}:sched
-- ARGV: now, rescue time, "{p}:", grace, then per account: account, most exports, train size.

--! include forget_message
local now, rescue, P, grace = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local send, expired = {}, {}
for i = 5, #ARGV, 3 do
  local acct, want, size, got = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), 0
  local index = P .. 'due:' .. acct
  local scan = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 2 * want + 200)
  for _, tid in ipairs(scan) do
    if got >= want then break end
    local v = redis.call('HMGET', P .. 'x:' .. tid, 'token', 'deadline')
    if not v[1] or v[1] == '' then
      redis.call('ZREM', index, tid)
    elseif tonumber(redis.call('ZSCORE', P .. 'sched', tid) or '0') <= now then
      redis.call('ZADD', P .. 'sched', rescue, tid)
      if tonumber(v[2]) + grace < now then
        expired[#expired + 1] = tid
      else
        if got % size == 0 then count_message(P, acct, tid, now) end
        got = got + 1
        send[#send + 1] = acct
        send[#send + 1] = tid
        send[#send + 1] = v[1]
      end
    end
  end
  if got < want then redis.call('SREM', P .. 'waiting', acct) end
end
return {send, expired}
