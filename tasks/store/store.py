"""The Redis store: every read and atomic write of tracked exports (key names: keys.py).

Every change of state is one Lua script, so two workers, two beats or a replayed message can
never both move an export or both dispatch its callback. Broker messages carry only tracking ids
and poll tokens; a message whose token is not the record's current one does nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from export_poller.store import codec, lua
from export_poller.store.codec import Arg
from export_poller.store.keys import Keys

_SIG_SLACK = 3600.0
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


class Store:
    """Every read and atomic write of tracked exports; the only module that knows the key layout."""

    def __init__(self, client: redis.Redis, prefix: str = "ep") -> None:
        self.r = client
        self.prefix = prefix
        self.keys = keys = Keys(prefix)
        self.sched, self.outbox, self.deadletter = keys.sched, keys.outbox, keys.deadletter
        self.metrics, self.idem, self.accounts = keys.metrics, keys.idem, keys.accounts
        self.flight, self.flight_n, self.waiting = keys.flight, keys.flight_n, keys.waiting
        self._sig_expiry: dict[str, float] = {}
        self._track = lua.register(client, "track")
        self._claim = lua.register(client, "claim")
        self._commit = lua.register(client, "commit")
        self._finish = lua.register(client, "finish")
        self._due = lua.register(client, "due")
        self._claim_due = lua.register(client, "claim_due")
        self._release = lua.register(client, "release")
        self._claim_outbox = lua.register(client, "claim_outbox")
        self._track_as = lua.register(client, "track_as")
        self._note_finished = lua.register(client, "note_finished")
        self._admit = lua.register(client, "admit")
        self._share_state = lua.register(client, "share_state")
        self._take_due = lua.register(client, "take_due")

    def key(self, tid: str) -> str:
        return self.keys.record(tid)

    def due_key(self, account: str) -> str:
        return self.keys.due(account)

    # -- callback signatures -----------------------------------------------------------------

    def put_signature(self, signature: Mapping[str, Any], ttl: float) -> str:
        """Store a signature once for all the exports that name it; returns its reference.

        The key must outlive the last export naming it, so its expiry is pushed out whenever a
        new export needs more than an hour beyond what this process last set.
        """
        text = json.dumps(signature, separators=(",", ":"), sort_keys=True)
        ref = codec.digest(text)
        needed = time.time() + ttl
        if self._sig_expiry.get(ref, 0.0) < needed:
            self.r.set(self.keys.signature(ref), text, ex=max(1, int(ttl + _SIG_SLACK)))
            self._sig_expiry[ref] = needed + _SIG_SLACK
        return ref

    def get_signature(self, ref: str) -> dict[str, Any] | None:
        text = self.r.get(self.keys.signature(ref))
        return cast(dict[str, Any], json.loads(cast(bytes, text))) if text else None

    # -- state changes -----------------------------------------------------------------------

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
        account, export_id = str(fields["account"]), str(fields["export_id"])
        digest = codec.idem_digest(account, export_id)
        args: list[Arg] = [tid, digest, rescue_at, codec.encode(fields["next_poll_at"])]
        args += [f"{self.prefix}:x:", cap, grace, *codec.pairs({**fields, "idem": digest})]
        keys = [self.idem, self.key(tid), self.sched, self.metrics, self.due_key(account)]
        keys.append(self.accounts)
        created, existing, admitted = script(keys=keys, args=args)
        return bool(created), codec.text(existing), bool(admitted)

    def note_finished(self, tid: str, counter: str, fields: Mapping[str, Any]) -> int | None:
        """Write fields on a finished record and count the event; None if it is not finished."""
        args: list[Arg] = [counter, *codec.pairs(fields)]
        count = int(self._note_finished(keys=[self.key(tid)], args=args))
        return None if count < 0 else count

    def claim(
        self, tid: str, token: str, claim_id: str, *, now: float, lease_until: float
    ) -> Claim | str:
        """Take the poll lease, or say why not: missing, stale, done, busy, early, or
        `wait:<time>` when the record may not be polled before a provider's stated time."""
        return self.claim_many([(tid, token)], claim_id, now=now, lease_until=lease_until)[0]

    def claim_many(
        self, pairs: Sequence[tuple[str, str]], claim_id: str, *, now: float, lease_until: float
    ) -> list[Claim | str]:
        """`claim` for every (tid, token) a message names, in one round trip."""
        args: list[Arg] = [now, lease_until, claim_id, _EARLY, f"{self.prefix}:"]
        for tid, token in pairs:
            args += [tid, token]
        replies = self._claim(keys=[self.sched], args=args)
        return [
            codec.text(reply)
            if isinstance(reply, bytes | str)
            else Claim(tid, claim_id, codec.fields(reply))
            for (tid, _), reply in zip(pairs, replies, strict=True)
        ]

    def release(self, claims: Sequence[Claim], *, rescue_at: float) -> None:
        """Give back claims a poll took but did not get to; their tokens stay valid."""
        if claims:
            args: list[Arg] = [claims[0].claim_id, rescue_at, f"{self.prefix}:"]
            self._release(keys=[self.sched], args=args + [c.tracking_id for c in claims])

    def commit_many(self, writes: Sequence[Write]) -> list[bool]:
        """Write each poll's result if its claim still holds (terminal writes also fill the
        outbox): a whole train in one round trip, each write succeeding on its own."""
        with self.r.pipeline(transaction=False) as pipe:
            for w in writes:
                tid = w.claim.tracking_id
                args: list[Arg] = [tid, w.claim.claim_id, int(w.terminal), w.sched_score or 0]
                args += [w.now, "" if w.terminal else w.new_token, f"{self.prefix}:"]
                args += [w.fields.get("next_poll_at") or 0, w.outcome, *codec.pairs(w.fields)]
                self._commit(keys=[self.key(tid), self.sched, self.outbox], args=args, client=pipe)
            return [bool(x) for x in pipe.execute()]

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
        """Force an active export into a terminal state (cancel, deadline expiry)."""
        args: list[Arg] = [tid, state, now, int(notify), int(respect_lease), int(ttl)]
        args += [f"{self.prefix}:", *codec.pairs(fields)]
        keys = [self.key(tid), self.sched, self.outbox]
        return bool(self._finish(keys=keys, args=args))

    def due(self, now: float, rescue_at: float, limit: int, grace: float) -> list[str]:
        """Exports past their deadline, re-armed for rescue so one sweep expires each once.
        Other due entries are left to the fair sweep (`take_due`); their accounts are noted
        for it, so an export tracked before accounts were kept is found too."""
        args: list[Arg] = [now, rescue_at, limit, f"{self.prefix}:x:", grace]
        expired = self._due(keys=[self.sched, self.accounts], args=args)
        return [codec.text(x) for x in expired]

    # -- the bounded backlog and the fair sweep ------------------------------------------------

    def admit(
        self,
        account: str,
        messages: Sequence[tuple[Sequence[tuple[str, str]], float]],
        *,
        now: float,
        cap: int,
        grace: float,
    ) -> list[bool]:
        """For each (pairs, due time) message of one account: True to hand it to the broker
        (it is counted until a worker starts it), False if it was parked in the schedule."""
        if not messages:
            return []
        args: list[Arg] = [now, cap, f"{self.prefix}:", grace, account]
        for pairs, due in messages:
            args += [due, len(pairs)]
            for tid, token in pairs:
                args += [tid, token]
        return [bool(x) for x in self._admit(keys=[self.flight], args=args)]

    def share_state(self, now: float, grace: float) -> tuple[int, dict[str, tuple[int, int]]]:
        """Ready messages of the fleet, and per account (due polls, ready messages)."""
        flat = self._share_state(keys=[self.flight], args=[now, f"{self.prefix}:", grace])
        rows = [codec.text(x) for x in flat[1:]]
        accounts = {
            acct: (int(due), int(ready))
            for acct, due, ready in zip(rows[::3], rows[1::3], rows[2::3], strict=True)
        }
        return int(flat[0]), accounts

    def take_due(
        self, now: float, rescue_at: float, grace: float, wants: Sequence[tuple[str, int, int]]
    ) -> tuple[list[tuple[str, str, str]], list[str]]:
        """Up to `most` due polls of each (account, most, train size), earliest first, as
        (account, tid, token) re-armed for rescue; and exports found past their deadline."""
        args: list[Arg] = [now, rescue_at, f"{self.prefix}:", grace]
        for account, most, size in wants:
            args += [account, most, size]
        send, expired = self._take_due(keys=[self.sched], args=args)
        flat = [codec.text(x) for x in send]
        taken = list(zip(flat[::3], flat[1::3], flat[2::3], strict=True))
        return taken, [codec.text(x) for x in expired]

    def backlog(self, now: float) -> dict[str, Any]:
        """For views: poll messages in the broker (ready now, all), per account, and due polls
        parked in Redis; plus each account's lag as the last sweep saw it."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zcount(self.flight, "-inf", now)
            pipe.zcard(self.flight)
            pipe.hgetall(self.flight_n)
            pipe.zcount(self.sched, "-inf", now)
            ready, total, per_account, due = pipe.execute()
        return {
            "ready": int(ready),
            "in_broker": int(total),
            "by_account": {codec.text(k): int(v) for k, v in per_account.items()},
            "due_in_redis": int(due),
        }

    def claim_due(
        self,
        account: str,
        claim_id: str,
        *,
        now: float,
        lease_until: float,
        due_by: float,
        limit: int,
    ) -> list[Claim]:
        """Take up to `limit` more polls of one account due by `due_by`, to ride along."""
        if limit <= 0:
            return []
        args: list[Arg] = [now, lease_until, claim_id, limit, f"{self.prefix}:x:", due_by]
        flat = self._claim_due(keys=[self.due_key(account), self.sched], args=args)
        return [
            Claim(codec.text(tid), claim_id, codec.fields(fields))
            for tid, fields in zip(flat[::2], flat[1::2], strict=True)
        ]

    # -- the outbox --------------------------------------------------------------------------

    def outbox_due(self, now: float, limit: int) -> list[str]:
        ids = self.r.zrangebyscore(self.outbox, "-inf", now, start=0, num=limit)
        return [codec.text(x) for x in cast(list[Any], ids)]

    def claim_outbox(self, tid: str, *, now: float, retry_at: float) -> dict[str, str] | None:
        """Take one callback to dispatch; None if another dispatcher has it or it is gone."""
        reply = self._claim_outbox(keys=[self.outbox, self.key(tid)], args=[tid, now, retry_at])
        if not reply:
            return None
        return codec.fields(reply)

    def ack_outbox(
        self, tid: str, *, now: float, ttl: float, provider: str = "", lag: float | None = None
    ) -> None:
        """Done with a callback; its lag (terminal state -> dispatch) feeds the metrics."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.outbox, tid)
            if lag is not None:
                pipe.hincrby(self.metrics, f"callbacks|{provider}", 1)
                pipe.hincrbyfloat(self.metrics, f"callback_lag_sum|{provider}", max(lag, 0.0))
            pipe.hset(self.key(tid), "callback_at", codec.encode(now))
            pipe.expire(self.key(tid), int(ttl))
            pipe.execute()

    def drop_outbox(self, tid: str) -> None:
        self.r.zrem(self.outbox, tid)

    def fail_outbox(self, tid: str, *, now: float, error: str, most: int, ttl: float) -> bool:
        """Count a failed dispatch; at `most` failures the callback is moved aside to the
        dead-letter set, so one bad signature is never retried forever. True when moved."""
        key = self.key(tid)
        failures = cast(int, self.r.hincrby(key, "callback_failures", 1))
        if failures < most:
            return False
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.outbox, tid)
            pipe.zadd(self.deadletter, {tid: now})
            pipe.hset(key, mapping={"callback_error": error, "callback_dead_at": codec.encode(now)})
            pipe.expire(key, int(ttl))
            pipe.execute()
        return True

    # -- reads -------------------------------------------------------------------------------

    def get(self, tid: str) -> dict[str, str] | None:
        raw = cast(dict[Any, Any], self.r.hgetall(self.key(tid)))
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

    def account_lags(self) -> dict[str, float]:
        """Seconds each account's most overdue poll was late at the last sweep."""
        return {k[4:]: v for k, v in self.metric_fields().items() if k.startswith("lag|")}

    def metric_fields(self) -> dict[str, float]:
        raw = cast(dict[Any, Any], self.r.hgetall(self.metrics))
        return {codec.text(k): float(codec.text(v)) for k, v in raw.items()}

    def counts(self) -> dict[str, int]:
        return {
            "scheduled": cast(int, self.r.zcard(self.sched)),
            "outbox": cast(int, self.r.zcard(self.outbox)),
            "deadletter": cast(int, self.r.zcard(self.deadletter)),
        }
