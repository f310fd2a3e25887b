-- claim: take the poll lease of each export a poll message names, or say why not.
--
-- KEYS[1]    {p}:sched        the schedule: a claimed export's entry moves to its lease's end
-- KEYS[2]    {p}:flight       the backlog ledger: the message has left the broker
-- KEYS[3]    {p}:flight_n     messages in the broker per account
-- KEYS[4]    {p}:deferred     the claimed exports' updates to their account's keys
-- KEYS[5..]  {p}:x:{tid}      the record of each (tid, token) pair, in ARGV's order
--
-- ARGV[1]    now
-- ARGV[2]    lease_until      when the lease ends
-- ARGV[3]    claim id         names this poll run's leases
-- ARGV[4]    early            seconds our own backoff lets a poll run before its planned time
-- ARGV[5..]  tid, token, ...  the message's exports; the ledger counted it by the first
--
-- Returns, per pair, the record (HGETALL) if claimed, else why not: missing, stale, done, busy,
-- early, or wait:<time> (a provider's stated not-before, a hard floor). The message names no
-- account, so the moves of the account's due index (claimed exports wait at the end of their
-- lease there too) and of its ledger zset are deferred (see lib/deferred.lua).

--! include active
--! include ledger

local now = tonumber(ARGV[1])
local k = {flight = KEYS[2], flight_n = KEYS[3], deferred = KEYS[4]}

local function why_not(v, token)
  if not v[1] then return 'missing' end
  if v[1] ~= token then return 'stale' end
  if not is_active(v[2]) then return 'done' end
  if v[3] and tonumber(v[3]) > now then return 'busy' end
  if v[6] and tonumber(v[6]) > now then return 'wait:' .. v[6] end
  if v[4] and tonumber(v[4]) > now + tonumber(ARGV[4]) then return 'early' end
  return nil
end

local out, claimed, accounts = {}, {}, {}
for i = 5, #ARGV, 2 do
  local tid, key = ARGV[i], KEYS[(i + 5) / 2]
  local v = redis.call(
    'HMGET', key, 'token', 'state', 'lease_until', 'next_poll_at', 'account', 'not_before')
  if i == 5 and v[5] then  -- the message has left the broker: no longer in its backlog
    forget_message(k, v[5], tid)
  end
  local why = why_not(v, ARGV[i + 1])
  if why then
    out[#out + 1] = why
  else
    redis.call('HSET', key, 'lease_until', ARGV[2], 'claim', ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[2], tid)
    if not claimed[v[5]] then
      claimed[v[5]], accounts[#accounts + 1] = {}, v[5]
    end
    table.insert(claimed[v[5]], tid)
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
for _, acct in ipairs(accounts) do
  defer_lease(k, acct, ARGV[2], claimed[acct])
end
return out
