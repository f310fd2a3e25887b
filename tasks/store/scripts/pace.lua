-- pace: one request's slot at an account's learned pace, fleet-wide. GCRA: one "theoretical
-- arrival time" per account; a request may go when it is at most `tolerance` seconds ahead of
-- now, and each one pushes it on by one interval.
--
-- KEYS[1]    {p}:brk:{acct}:tat   the account's theoretical arrival time
--
-- ARGV[1]    now
-- ARGV[2]    interval     seconds between requests at the pace
-- ARGV[3]    tolerance    seconds of burst allowed
--
-- Returns "" to go, or the seconds to wait.

local now, interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
if tat - now > tolerance then return tostring(tat - tolerance - now) end
local keep = math.ceil((tat + interval - now + tolerance) * 1000) + 1000
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', keep)
return ''
