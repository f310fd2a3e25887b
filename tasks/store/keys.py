"""Every Redis key the store uses, named in this one place.

Keys (prefix `ep` by default):

    {p}:x:{tid}         hash    one record per tracked export; small scalar fields only while
                                active, so Redis keeps it as a compact listpack
    {p}:idem            hash    digest(account, export id) -> tid while the export is active
    {p}:sched           zset    tid -> when the sweep must next look at it: the next poll time
                                of a parked poll, the rescue time of one handed to Celery or in
                                flight; a due entry past its deadline is expired instead
    {p}:outbox          zset    tid -> when its callback is (re)dispatched
    {p}:deadletter      zset    tid -> when its callback was given up after failed dispatches
    {p}:due:{acct}      zset    tid -> next poll time, per account: a poll task takes the
                                account's other due exports along in one run (a train)
    {p}:sig:{digest}    string  a callback signature, shared by every export that names it
    {p}:accounts        set     every account with tracked exports: the fair sweep's round
    {p}:flight          zset    "{acct}|{first tid}" -> when to stop counting it: poll messages
                                handed to the broker and not yet started (the bounded backlog)
    {p}:flight:{acct}   zset    first tid -> due time: the account's messages in {p}:flight;
                                expires once the last would count as lost when the account
                                leaves the sweep's round
    {p}:flight_n        hash    account -> its messages in {p}:flight
    {p}:waiting         set     accounts with due polls turned away by the bound, for the sweep
    {p}:metrics         hash    counters and gauges for Prometheus, kept by the same scripts
    {p}:fleet           zset    worker -> when it last sent its heartbeat: the live workers,
                                listed without SCAN; a member whose entry is gone is pruned
                                when the roster is read
    {p}:fleet:{worker}  string  a worker's roster entry, JSON: the accounts it serves (name ->
                                provider, never a secret), its host and pid; expires after
                                three heartbeat intervals, so a killed worker drops out

Every script is given every key it touches in KEYS, named here: none builds a key name. A
poll message names its account, so its claim is given the account's keys too. The fleet-wide
keys (schedule, ledger, outbox) still put the store on one Redis server, not Redis
Cluster; a per-account hash tag would be added here, and only here.
"""

from __future__ import annotations


class Keys:
    """The key names of one store (one prefix)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sched = f"{prefix}:sched"
        self.outbox = f"{prefix}:outbox"
        self.deadletter = f"{prefix}:deadletter"
        self.metrics = f"{prefix}:metrics"
        self.idem = f"{prefix}:idem"
        self.accounts = f"{prefix}:accounts"
        self.flight = f"{prefix}:flight"
        self.flight_n = f"{prefix}:flight_n"
        self.waiting = f"{prefix}:waiting"
        self.fleet = f"{prefix}:fleet"
        self._record = f"{prefix}:x:"

    def record(self, tid: str) -> str:
        return self._record + tid

    def due(self, account: str) -> str:
        return f"{self.prefix}:due:{account}"

    def flight_of(self, account: str) -> str:
        return f"{self.prefix}:flight:{account}"

    def worker(self, name: str) -> str:
        return f"{self.fleet}:{name}"

    def signature(self, ref: str) -> str:
        return f"{self.prefix}:sig:{ref}"

    def records_matching(self, tid_prefix: str = "") -> str:
        """A SCAN pattern for the records whose ids start with `tid_prefix` (no glob in it)."""
        return f"{self._record}{tid_prefix}*"

    def tid_of(self, record_key: str) -> str:
        return record_key[len(self._record) :]
