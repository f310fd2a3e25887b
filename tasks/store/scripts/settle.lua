-- settle: apply claims' deferred updates to one account's keys, before the caller reads them
-- (see lib/deferred.lua).
--
-- KEYS[1]    {p}:deferred       the updates waiting
-- KEYS[2]    {p}:due:{acct}     the account's due index
-- KEYS[3]    {p}:flight:{acct}  the account's messages in the ledger
--
-- ARGV[1]    account

--! include deferred

settle({deferred = KEYS[1], due = KEYS[2], flight_of = KEYS[3]}, ARGV[1])
return 1
