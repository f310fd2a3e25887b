-- track_as: `track` under a caller-chosen id. A repeat with the same (account, export id) is
-- the same tracking; an id already used by another export is refused (""), never overwritten.
--
-- KEYS[1]   {p}:idem            (account, export id) digest -> its active tracking id
-- KEYS[2]   {p}:x:{tid}         the new record
-- KEYS[3]   {p}:sched           the schedule: the record's rescue time
-- KEYS[4]   {p}:metrics         the provider's active count, the account's parked count
-- KEYS[5]   {p}:accounts        accounts with tracked exports: the fair sweep's round
-- KEYS[6]   {p}:due:{acct}      the account's due index
-- KEYS[7]   {p}:flight          the backlog ledger, fleet-wide
-- KEYS[8]   {p}:flight_n        messages in the broker per account
-- KEYS[9]   {p}:flight:{acct}   the account's messages in the ledger
-- KEYS[10]  {p}:waiting         accounts with polls turned away by the bound
-- KEYS[11]  {p}:x:{other}       only with ARGV[7]: the record of the tracking {p}:idem names
--
-- ARGV[1]   tid                 the new tracking id
-- ARGV[2]   digest              idem_digest(account, export id)
-- ARGV[3]   rescue time         when the sweep re-sends the first poll if it is lost
-- ARGV[4]   now                 the first poll's time (the record's next_poll_at)
-- ARGV[5]   cap                 the backlog bound (POLLER_BACKLOG_MAX), 0 for none
-- ARGV[6]   grace               how late a counted message may be before it counts as lost
-- ARGV[7]   other               the tracking id the caller last saw {p}:idem name for digest,
--                               "" if none: {p}:idem may only be trusted with its record
-- ARGV[8..] name, value, ...    the record's fields
--
-- Returns {0, tid, 0} for a repeat, {0, "", 0} for an id taken, else as track.lua: {1, tid, 1}
-- created and its first poll may go to the broker now, {1, tid, 0} created and parked, {0,
-- other, 0} the export is active as other, {-1, other, 0} ask again naming other's record.

--! include tracking

local taken = redis.call('HGET', KEYS[2], 'idem')
if taken then
  if taken == ARGV[2] then return {0, ARGV[1], 0} end
  return {0, '', 0}
end
return track()
