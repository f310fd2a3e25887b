-- overdue: of the schedule's due entries, the exports past their deadline, re-armed for rescue
-- so one sweep expires each once. Other due entries are left to the fair sweep (take_due.lua);
-- their accounts are noted for it, so an export tracked before accounts were kept is found too.
--
-- KEYS[1]    {p}:sched          the schedule
-- KEYS[2]    {p}:accounts       accounts with tracked exports: the fair sweep's round
-- KEYS[3..]  {p}:x:{tid}        the record of each candidate, in ARGV's order
--
-- ARGV[1]    now
-- ARGV[2]    rescue time        an expired export's next look, should its expiry be lost
-- ARGV[3]    grace              how long past its deadline an export may still be polled
-- ARGV[4..]  tid, ...           candidates: the schedule's entries due by now, as the caller
--                               read them; each is checked again here
--
-- Returns the tracking ids past their deadline.

local now, expired = tonumber(ARGV[1]), {}
for i = 4, #ARGV do
  local tid, key = ARGV[i], KEYS[i - 1]
  local at = redis.call('ZSCORE', KEYS[1], tid)
  if at and tonumber(at) <= now then  -- still due as the caller read it
    local v = redis.call('HMGET', key, 'token', 'deadline', 'account')
    if not v[1] or v[1] == '' then
      redis.call('ZREM', KEYS[1], tid)
    elseif tonumber(v[2]) + tonumber(ARGV[3]) < now then
      redis.call('ZADD', KEYS[1], ARGV[2], tid)
      expired[#expired + 1] = tid
    else  -- sent by the fair sweep, from its account's due index
      redis.call('SADD', KEYS[2], v[3])
    end
  end
end
return expired
