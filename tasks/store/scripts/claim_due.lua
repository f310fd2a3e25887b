-- claim_due: take up to `limit` more of one account's polls due by `due by`, to ride along
-- with a poll run (a train).
--
-- KEYS[1]    {p}:due:{acct}     the account's due index: a claimed export waits at its lease's end
-- KEYS[2]    {p}:sched          the schedule: likewise
-- KEYS[3..]  {p}:x:{tid}        the record of each candidate, in ARGV's order
--
-- ARGV[1]    now
-- ARGV[2]    lease_until        when the leases end
-- ARGV[3]    claim id           the run's claim id
-- ARGV[4]    limit              most exports to take
-- ARGV[5]    due by             take exports due by this time
-- ARGV[6]    polled before      an export last polled after this time is not taken along
--                               (no poll sooner than the backoff floor after the last), or ""
-- ARGV[7..]  tid, ...           candidates, earliest first, as the caller read the due index
--                               (2 x limit of them); each is checked again here
--
-- Returns tid, record (HGETALL), tid, record... for each export claimed.

--! include active

local now, limit, out = tonumber(ARGV[1]), tonumber(ARGV[4]), {}
local polled_before = tonumber(ARGV[6])
for i = 7, #ARGV do
  if #out >= 2 * limit then break end
  local tid, key = ARGV[i], KEYS[i - 4]
  local at = redis.call('ZSCORE', KEYS[1], tid)
  if at and tonumber(at) <= tonumber(ARGV[5]) then  -- still due as the caller read it
    local v = redis.call(
      'HMGET', key, 'state', 'lease_until', 'not_before', 'updated_at', 'attempts')
    if not is_active(v[1]) then
      redis.call('ZREM', KEYS[1], tid)
    elseif v[2] and tonumber(v[2]) > now then
      redis.call('ZADD', KEYS[1], v[2], tid)
    elseif v[3] and tonumber(v[3]) > now then
      -- a provider's stated time: not taken along early, and moved to that time so it does
      -- not sit at the head of the index in front of exports that are due
      redis.call('ZADD', KEYS[1], v[3], tid)
    elseif polled_before and v[5] ~= '0' and v[4] and tonumber(v[4]) > polled_before then
      -- polled moments ago by another run (not just tracked): left for its own message
    else
      redis.call('HSET', key, 'lease_until', ARGV[2], 'claim', ARGV[3])
      redis.call('ZADD', KEYS[2], ARGV[2], tid)
      redis.call('ZADD', KEYS[1], ARGV[2], tid)
      out[#out + 1] = tid
      out[#out + 1] = redis.call('HGETALL', key)
    end
  end
end
return out
