-- hold: hold an account until a time, fleet-wide; only forward (two workers' 429s: the later
-- time wins), counted; and mark the account as held lately (its trains then read the hold
-- before every request).
--
-- KEYS[1]    {p}:brk:{acct}:hold     the hold: its end time
-- KEYS[2]    {p}:metrics             the metrics hash
-- KEYS[3]    {p}:brk:{acct}:lim      the held-lately mark
--
-- ARGV[1]    until            the hold's end (a Unix time)
-- ARGV[2]    keep_ms          how long the hold key lives
-- ARGV[3]    metrics field    counted once per hold that moved
-- ARGV[4]    mark_s           how long the held-lately mark lives
--
-- Returns 1 if the hold moved forward, 0 if an equal or later one was there.

redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= old then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return 1
