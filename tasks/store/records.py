"""Records: one hash per tracked export, the idempotency index and the schedule."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import redis

from export_poller.store import codec, lua
from export_poller.store.codec import Arg
from export_poller.store.keys import Keys
from export_poller.store.part import REREADS, Part


class Records(Part):
    """Create, finish and read records; the sweep finds the overdue ones."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        super().__init__(client, keys)
        self._track = lua.register(client, "track")
        self._track_as = lua.register(client, "track_as")
        self._note_finished = lua.register(client, "note_finished")
        self._finish = lua.register(client, "finish")
        self._overdue = lua.register(client, "overdue")

    def track(
        self,
        tid: str,
        fields: Mapping[str, Any],
        *,
        rescue_at: float,
        cap: int = 0,
        grace: float = 0.0,
    ) -> tuple[bool, str, bool]:
        """Create a record unless this (account, export id) is already active: (created, tid,
        whether its first poll may go to the broker now under the backlog bound `cap`; 0 for
        none: else it is parked, due now, for the fair sweep)."""
        return self._tracked(self._track, tid, fields, rescue_at, cap, grace)

    def track_as(
        self,
        tid: str,
        fields: Mapping[str, Any],
        *,
        rescue_at: float,
        cap: int = 0,
        grace: float = 0.0,
    ) -> tuple[bool, str, bool]:
        """`track` under a caller-chosen id: (False, tid, _) for a repeat of the same export,
        (False, other, _) if the export is active under another id, (False, "", _) if the id
        is taken."""
        return self._tracked(self._track_as, tid, fields, rescue_at, cap, grace)

    def _tracked(
        self,
        script: Any,
        tid: str,
        fields: Mapping[str, Any],
        rescue_at: float,
        cap: int,
        grace: float,
    ) -> tuple[bool, str, bool]:
        """The track script, sent again (naming that tracking's record) while the idempotency
        index names another tracking than the one this call last saw there."""
        k, account = self.keys, str(fields["account"])
        digest = codec.idem_digest(account, str(fields["export_id"]))
        keys = [k.idem, k.record(tid), k.sched, k.metrics, k.accounts, k.due(account)]
        keys += [k.flight, k.flight_n, k.flight_of(account), k.waiting]
        head: list[Arg] = [tid, digest, rescue_at, codec.encode(fields["next_poll_at"]), cap, grace]
        tail = codec.pairs({**fields, "idem": digest})
        other = ""
        for _ in range(REREADS):
            named = [k.record(other)] if other else []
            created, existing, admitted = script(keys=keys + named, args=[*head, other, *tail])
            if int(created) >= 0:
                return bool(created), codec.text(existing), bool(admitted)
            other = codec.text(existing)
        raise RuntimeError(f"the idempotency index kept changing under tracking id {tid}")

    def note_finished(self, tid: str, counter: str, fields: Mapping[str, Any]) -> int | None:
        """Write fields on a finished record and count the event; None if it is not finished."""
        args: list[Arg] = [counter, *codec.pairs(fields)]
        count = int(self._note_finished(keys=[self.keys.record(tid)], args=args))
        return None if count < 0 else count

    def finish(
        self,
        tid: str,
        state: str,
        fields: Mapping[str, Any],
        *,
        now: float,
        notify: bool,
        respect_lease: bool,
        ttl: float,
    ) -> bool:
        """Force an active export into a terminal state (cancel, deadline expiry). Costs a
        read of the record's account first: the script needs its account's keys."""
        k, record = self.keys, self.keys.record(tid)
        middle: list[Arg] = [now, int(notify), int(respect_lease), int(ttl)]
        for _ in range(REREADS):
            account = self.r.hget(record, "account")
            if account is None:
                return False
            acct = codec.text(account)
            keys = [record, k.sched, k.outbox, k.metrics, k.idem, k.due(acct)]
            args = [tid, state, *middle, acct, *codec.pairs(fields)]
            done = int(self._finish(keys=keys, args=args))
            if done >= 0:
                return bool(done)
        return False

    def due(self, now: float, rescue_at: float, limit: int, grace: float) -> list[str]:
        """Exports past their deadline, re-armed for rescue so one sweep expires each once.
        Other due entries are left to the fair sweep (`take_due`); their accounts are noted
        for it, so an export tracked before accounts were kept is found too."""
        k = self.keys
        found = self.r.zrangebyscore(k.sched, "-inf", now, start=0, num=limit)
        tids = [codec.text(x) for x in cast(list[Any], found)]
        if not tids:
            return []
        keys = [k.sched, k.accounts, *map(k.record, tids)]
        expired = self._overdue(keys=keys, args=[now, rescue_at, grace, *tids])
        return [codec.text(x) for x in expired]

    def accounts_of(self, tids: Sequence[str]) -> list[str | None]:
        """The account each record names (None if it is gone), in one round trip: what a poll
        message sent before messages named their account costs to claim."""
        with self.r.pipeline(transaction=False) as pipe:
            for tid in tids:
                pipe.hget(self.keys.record(tid), "account")
            return [None if a is None else codec.text(a) for a in pipe.execute()]

    def get(self, tid: str) -> dict[str, str] | None:
        raw = cast(dict[Any, Any], self.r.hgetall(self.keys.record(tid)))
        return {codec.text(k): codec.text(v) for k, v in raw.items()} or None

    def iter_ids(self, count: int = 1000) -> Iterator[str]:
        """Every tracking id, by SCAN: for the CLI and operators, never on the poll path."""
        for key in self.r.scan_iter(match=self.keys.records_matching(), count=count):
            yield self.keys.tid_of(codec.text(key))

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Tracking ids starting with `prefix` (an operator's shortened id), at most `limit`;
        a SCAN, so for the CLI only. The prefix must hold no glob characters."""
        found = []
        for key in self.r.scan_iter(match=self.keys.records_matching(prefix), count=1000):
            found.append(self.keys.tid_of(codec.text(key)))
            if len(found) >= limit:
                break
        return sorted(found)
