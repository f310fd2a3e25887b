-- share_state: the fair sweep's view. Ready messages of the fleet, and per account with due
-- polls: its due polls, its ready messages, and how late its most overdue poll is (kept in the
-- metrics hash). An account whose due index is empty leaves the sweep's round.
--
-- KEYS[1]    {p}:flight         the backlog ledger, fleet-wide
-- KEYS[2]    {p}:flight_n       messages in the broker per account
-- KEYS[3]    {p}:accounts       accounts with tracked exports: the sweep's round
-- KEYS[4]    {p}:waiting        accounts with polls turned away by the bound
-- KEYS[5]    {p}:metrics        lag|{acct}: seconds its most overdue poll is late
-- KEYS[6..]  per account of ARGV, in order: {p}:due:{acct}, {p}:flight:{acct}
--
-- ARGV[1]    now
-- ARGV[2]    grace              how late a counted message may be before it counts as lost
-- ARGV[3..]  account, ...       the members of {p}:accounts, as the caller read them
--
-- Returns {ready messages of the fleet, then account, due polls, ready messages, ...}.

--! include ledger

local now = tonumber(ARGV[1])
local before = now - tonumber(ARGV[2])
forget_lost({flight = KEYS[1], flight_n = KEYS[2]}, before)
local out = {redis.call('ZCOUNT', KEYS[1], '-inf', now)}
for i = 3, #ARGV do
  local acct, due, flight_of = ARGV[i], KEYS[2 * i], KEYS[2 * i + 1]
  forget_lost_of(flight_of, before)
  local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('SREM', KEYS[3], acct)
    redis.call('SREM', KEYS[4], acct)
    redis.call('HDEL', KEYS[5], 'lag|' .. acct)
    expire_when_lost(flight_of, tonumber(ARGV[2]))
  else
    local lag = math.max(0, now - tonumber(head[2]))
    redis.call('HSET', KEYS[5], 'lag|' .. acct, string.format('%.3f', lag))
    local waiting = redis.call('ZCOUNT', due, '-inf', now)
    if waiting == 0 then redis.call('SREM', KEYS[4], acct) end
    out[#out + 1] = acct
    out[#out + 1] = waiting
    out[#out + 1] = redis.call('ZCOUNT', flight_of, '-inf', now)
  end
end
return out
