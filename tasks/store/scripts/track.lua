-- track: a new record unless the export is active, and its first poll's admission.
-- KEYS[1] {p}:idem, KEYS[2] the record, KEYS[3] {p}:sched, KEYS[4] {p}:metrics,
-- KEYS[5] {p}:due:{acct}, KEYS[6] {p}:accounts
-- ARGV: tid, digest, rescue time, next_poll_at, "{p}:x:", cap, grace, then field pairs.

--! include track

