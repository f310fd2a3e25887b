-- take_due: each account's share of due polls from its due index, earliest first, skipping
-- exports handed off or claimed (their schedule entry is in the future), re-armed for rescue;
-- each message of `train size` exports is counted in the ledger.
--
-- KEYS[1]    {p}:sched          the schedule: a taken export's rescue time
-- KEYS[2]    {p}:flight         the backlog ledger, fleet-wide
-- KEYS[3]    {p}:flight_n       messages in the broker per account
-- KEYS[4]    {p}:waiting        accounts with polls turned away by the bound
-- KEYS[5..]  per account of ARGV, in order: {p}:due:{acct}, {p}:flight:{acct}, then the
--            record {p}:x:{tid} of each of its candidates, in ARGV's order
--
-- ARGV[1]    now
-- ARGV[2]    rescue time
-- ARGV[3]    grace              how long past its deadline an export may still be polled
-- ARGV[4..]  per account: account, most exports, train size, n, then n candidates: its due
--            index's entries due by now, earliest first, as the caller read them;
--            each is checked again here
--
-- Returns {{account, tid, token, ...} taken, {tid, ...} found past their deadline}.

--! include ledger

local now, rescue, grace = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local send, expired = {}, {}

local function take_one(k, acct, tid, record, got, size)
  local at = redis.call('ZSCORE', k.due, tid)
  if not at or tonumber(at) > now then return got end  -- no longer due as the caller read it
  local v = redis.call('HMGET', record, 'token', 'deadline')
  if not v[1] or v[1] == '' then
    redis.call('ZREM', k.due, tid)
  elseif tonumber(redis.call('ZSCORE', KEYS[1], tid) or '0') <= now then
    redis.call('ZADD', KEYS[1], rescue, tid)
    if tonumber(v[2]) + grace < now then
      expired[#expired + 1] = tid
    else
      if got % size == 0 then count_message(k, acct, tid, now) end
      got = got + 1
      send[#send + 1] = acct
      send[#send + 1] = tid
      send[#send + 1] = v[1]
    end
  end
  return got
end

local i, key = 4, 5
while i <= #ARGV do
  local acct, want = ARGV[i], tonumber(ARGV[i + 1])
  local size, n = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local k = {
    flight = KEYS[2], flight_n = KEYS[3], due = KEYS[key], flight_of = KEYS[key + 1],
  }
  local got = 0
  for j = 1, n do
    if got >= want then break end
    got = take_one(k, acct, ARGV[i + 3 + j], KEYS[key + 1 + j], got, size)
  end
  if got < want then redis.call('SREM', KEYS[4], acct) end
  i, key = i + 4 + n, key + 2 + n
end
return {send, expired}
