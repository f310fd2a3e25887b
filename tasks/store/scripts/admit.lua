-- admit: hand one account's messages to the broker under the backlog bound, or park them.
-- KEYS[1] {p}:flight
-- ARGV: now, cap, "{p}:", grace, account, then per message: due time, n, n tid/token pairs.

--! include admit_fn
local now, cap, P, acct = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[5]
forget_lost(P, now - tonumber(ARGV[4]))
local share = share_of(P, acct, cap)
local out, i = {}, 6
while i <= #ARGV do
  local due, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if admit(P, acct, now, cap, share, due, ARGV[i + 2]) then
    out[#out + 1] = 1
  else
    for j = i + 2, i + 2 * n, 2 do
      if redis.call('HGET', P .. 'x:' .. ARGV[j], 'token') == ARGV[j + 1] then
        redis.call('ZADD', P .. 'sched', due, ARGV[j])
      end
    end
    out[#out + 1] = 0
  end
  i = i + 2 + 2 * n
end
return out
