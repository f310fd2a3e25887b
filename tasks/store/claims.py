"""Claims: a poll's lease on the records it polls, and the commit of what it found."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from export_poller.store import codec, lua
from export_poller.store.codec import Arg
from export_poller.store.keys import Keys
from export_poller.store.part import Part

# Seconds a poll may run before its planned time: covers clock skew between workers and the
# engine's train spread (follow-ups up to 1 s apart leave in one message at the earliest time).
# Only our own backoff is this loose: a record's `not_before` (a provider's Retry-After or
# X-RateLimit-Reset, an account hold) is a hard floor for claims and for train take-along.
_EARLY = 2.0


@dataclass(frozen=True)
class Claim:
    """A poll's exclusive right to update one record until `commit` or its lease runs out."""

    tracking_id: str
    claim_id: str
    fields: dict[str, str]


@dataclass(frozen=True)
class Write:
    """One poll's result, to be written only while its claim still holds."""

    claim: Claim
    fields: Mapping[str, Any]
    new_token: str
    now: float
    terminal: bool
    sched_score: float | None
    outcome: str = "unknown"


_CROWDED_READS = 3  # reads of the due index by one run at most


class Claims(Part):
    """Take, give back and commit the poll leases of records."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        super().__init__(client, keys)
        self._claim = lua.register(client, "claim")
        self._claim_due = lua.register(client, "claim_due")
        self._release = lua.register(client, "release")
        self._commit = lua.register(client, "commit")

    def claim(
        self, tid: str, token: str, claim_id: str, *, account: str, now: float, lease_until: float
    ) -> Claim | str:
        """Take the poll lease, or say why not: missing, misrouted (another account's), stale,
        done, busy, early, or `wait:<time>` when the record may not be polled before a
        provider's stated time."""
        pairs = [(tid, token)]
        return self.claim_many(pairs, claim_id, account=account, now=now, lease_until=lease_until)[
            0
        ]

    def claim_many(
        self,
        pairs: Sequence[tuple[str, str]],
        claim_id: str,
        *,
        account: str,
        now: float,
        lease_until: float,
    ) -> list[Claim | str]:
        """`claim` for every (tid, token) a message of `account` names, in one round trip."""
        found, _ = self.claim_message(
            pairs, claim_id, account=account, now=now, lease_until=lease_until, due_by=now, most=0
        )
        return found

    def claim_message(
        self,
        pairs: Sequence[tuple[str, str]],
        claim_id: str,
        *,
        account: str,
        now: float,
        lease_until: float,
        due_by: float,
        most: int,
    ) -> tuple[list[Claim | str], list[str]]:
        """`claim_many`, and in the same round trip up to `most` ids of the account's due index
        due by `due_by`, read after the claim: the candidates for `claim_due` to take along."""
        k = self.keys
        keys = [k.sched, k.flight, k.flight_n, k.due(account), k.flight_of(account)]
        args: list[Arg] = [now, lease_until, claim_id, _EARLY, account]
        for tid, token in pairs:
            args += [tid, token]
        batch = lua.Batch(self.r)
        batch.script(self._claim, keys + [k.record(tid) for tid, _ in pairs], args)
        if most > 0:
            batch.pipe.zrangebyscore(k.due(account), "-inf", due_by, start=0, num=most)
        replies, *due = batch.execute()
        found = [
            codec.text(reply)
            if isinstance(reply, bytes | str)
            else Claim(tid, claim_id, codec.fields(reply))
            for (tid, _), reply in zip(pairs, replies, strict=True)
        ]
        return found, [codec.text(x) for x in (due[0] if due else [])]

    def claim_due(
        self,
        account: str,
        claim_id: str,
        *,
        now: float,
        lease_until: float,
        due_by: float,
        limit: int,
        polled_before: float | None = None,
        candidates: Sequence[str] | None = None,
    ) -> list[Claim]:
        """Take up to `limit` more polls of one account due by `due_by`, to ride along: from
        `candidates` (read with the claim, see `claim_message`), else the due index is read
        first; the script checks each again. An export polled after `polled_before` stays
        behind (a run takes exports due a little early along)."""
        taken: list[Claim] = []
        tids = list(candidates) if candidates is not None else None
        for _ in range(_CROWDED_READS):
            wanted = limit - len(taken)
            if wanted <= 0:
                break
            if tids is None:
                (tids,) = self._due_ids([(account, due_by, 2 * wanted)])
            if not tids:
                break
            k, floor = self.keys, "" if polled_before is None else polled_before
            args: list[Arg] = [now, lease_until, claim_id, wanted, due_by, floor, *tids]
            flat = self._claim_due(keys=[k.due(account), k.sched, *map(k.record, tids)], args=args)
            taken += [
                Claim(codec.text(tid), claim_id, codec.fields(fields))
                for tid, fields in zip(flat[::2], flat[1::2], strict=True)
            ]
            # Fewer taken than there were candidates for: runs that read the index at the same
            # moment took them first (claimed exports move to their lease's end), so what is
            # still due is read again, or a burst leaves in many small requests.
            if len(flat) // 2 >= wanted or len(tids) < wanted:
                break
            tids = None
        return taken

    def release(
        self, claims: Sequence[Claim], *, rescue_at: float, pipeline: Pipeline | None = None
    ) -> None:
        """Give back claims a poll took but did not get to; their tokens stay valid. One
        script per account of the claims (a run's claims are of one account)."""
        if not claims:
            return
        by_account: dict[str, list[str]] = {}
        for c in claims:
            by_account.setdefault(c.fields["account"], []).append(c.tracking_id)
        k = self.keys
        with self.r.pipeline(transaction=False) as own:
            pipe = own if pipeline is None else pipeline
            for account, tids in by_account.items():
                keys = [k.sched, k.due(account)]
                args: list[Arg] = [claims[0].claim_id, rescue_at, *tids]
                self._release(keys=keys + [k.record(t) for t in tids], args=args, client=pipe)
            if pipeline is None:
                own.execute()

    def commit_many(self, writes: Sequence[Write]) -> list[bool]:
        """Write each poll's result if its claim still holds (terminal writes also fill the
        outbox): a whole train in one round trip, each write succeeding on its own."""
        batch = lua.Batch(self.r)
        for w in writes:
            self.commit(w, batch)
        return [bool(x) for x in batch.execute()]

    def commit(self, w: Write, batch: lua.Batch) -> None:
        """Queue one poll's commit on `batch` (its reply: 1 written, 0 claim lost)."""
        k, tid, account = self.keys, w.claim.tracking_id, w.claim.fields["account"]
        keys = [k.record(tid), k.sched, k.outbox, k.metrics, k.idem, k.due(account)]
        args: list[Arg] = [tid, w.claim.claim_id, int(w.terminal), w.sched_score or 0, w.now]
        args += ["" if w.terminal else w.new_token, w.fields.get("next_poll_at") or 0]
        args += [w.outcome, *codec.pairs(w.fields)]
        batch.script(self._commit, keys, args)
