-- admit: for each poll message of one account, hand it to the broker under the backlog bound
-- (it is counted in the ledger until a worker starts it) or park it: its exports go back to
-- the schedule at its due time, and the account waits for the fair sweep.
--
-- KEYS[1]    {p}:flight         the backlog ledger, fleet-wide
-- KEYS[2]    {p}:flight_n       messages in the broker per account
-- KEYS[3]    {p}:waiting        accounts with polls turned away by the bound
-- KEYS[4]    {p}:metrics        the account's parked count
-- KEYS[5]    {p}:sched          the schedule: a parked message's exports, at its due time
-- KEYS[6]    {p}:flight:{acct}  the account's messages in the ledger
-- KEYS[7..]  {p}:x:{tid}        the record of every pair of every message, in ARGV's order
--
-- ARGV[1]    now
-- ARGV[2]    cap                the backlog bound (POLLER_BACKLOG_MAX)
-- ARGV[3]    grace              how late a counted message may be before it counts as lost
-- ARGV[4]    account
-- ARGV[5..]  per message: its due time, n, then its n (tid, token) pairs
--
-- Returns 1 (handed over) or 0 (parked) per message.

--! include admission

local now, cap, acct = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[4]
local k = {
  flight = KEYS[1], flight_n = KEYS[2], waiting = KEYS[3], metrics = KEYS[4],
  flight_of = KEYS[6],
}
forget_lost(k, now - tonumber(ARGV[3]))
local share = share_of(k, acct, cap)

local function park(due, first_arg, first_key, n)
  for j = 0, n - 1 do
    local tid, token = ARGV[first_arg + 2 * j], ARGV[first_arg + 2 * j + 1]
    if redis.call('HGET', KEYS[first_key + j], 'token') == token then
      redis.call('ZADD', KEYS[5], due, tid)
    end
  end
end

local out, i, record = {}, 5, 7
while i <= #ARGV do
  local due, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if admit_message(k, acct, now, cap, share, due, ARGV[i + 2]) then
    out[#out + 1] = 1
  else
    park(due, i + 2, record, n)
    out[#out + 1] = 0
  end
  i, record = i + 2 + 2 * n, record + n
end
return out
