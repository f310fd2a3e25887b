"""The backlog ledger: poll messages in the broker, counted so the fleet keeps their number bounded
and shares it fairly among accounts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis

from export_poller.store import codec, lua
from export_poller.store.codec import Arg
from export_poller.store.keys import Keys
from export_poller.store.part import Part

# Due-index entries the fair sweep reads per account: twice what it may take, and some, for the
# exports it skips (handed off or claimed since they fell due).
_SCAN_TIMES, _SCAN_MORE = 2, 200


class Ledger(Part):
    """Admit messages under the bound, and feed the fair sweep."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        super().__init__(client, keys)
        self._admit = lua.register(client, "admit")
        self._share_state = lua.register(client, "share_state")
        self._take_due = lua.register(client, "take_due")

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
        k = self.keys
        keys = [k.flight, k.flight_n, k.waiting, k.metrics, k.sched, k.flight_of(account)]
        args: list[Arg] = [now, cap, grace, account]
        for pairs, due in messages:
            args += [due, len(pairs)]
            for tid, token in pairs:
                args += [tid, token]
                keys.append(k.record(tid))
        return [bool(x) for x in self._admit(keys=keys, args=args)]

    def share_state(self, now: float, grace: float) -> tuple[int, dict[str, tuple[int, int]]]:
        """Ready messages of the fleet, and per account (due polls, ready messages): the
        accounts are read first, then the script reads each one's due index and ledger."""
        k = self.keys
        members = cast(set[Any], self.r.smembers(k.accounts))
        accounts = sorted(codec.text(x) for x in members)
        keys = [k.flight, k.flight_n, k.accounts, k.waiting, k.metrics]
        for account in accounts:
            keys += [k.due(account), k.flight_of(account)]
        flat = self._share_state(keys=keys, args=[now, grace, *accounts])
        rows = [codec.text(x) for x in flat[1:]]
        shares = {
            acct: (int(due), int(ready))
            for acct, due, ready in zip(rows[::3], rows[1::3], rows[2::3], strict=True)
        }
        return int(flat[0]), shares

    def take_due(
        self, now: float, rescue_at: float, grace: float, wants: Sequence[tuple[str, int, int]]
    ) -> tuple[list[tuple[str, str, str]], list[str]]:
        """Up to `most` due polls of each (account, most, train size), earliest first, as
        (account, tid, token) re-armed for rescue; and exports found past their deadline. Each
        account's due index is read first, then the script takes from what was read."""
        reads = [(account, now, _SCAN_TIMES * most + _SCAN_MORE) for account, most, _ in wants]
        k = self.keys
        keys = [k.sched, k.flight, k.flight_n, k.waiting]
        args: list[Arg] = [now, rescue_at, grace]
        for (account, most, size), tids in zip(wants, self._due_ids(reads), strict=True):
            keys += [k.due(account), k.flight_of(account), *map(k.record, tids)]
            args += [account, most, size, len(tids), *tids]
        send, expired = self._take_due(keys=keys, args=args)
        flat = [codec.text(x) for x in send]
        taken = list(zip(flat[::3], flat[1::3], flat[2::3], strict=True))
        return taken, [codec.text(x) for x in expired]

    def backlog(self, now: float) -> dict[str, Any]:
        """For views: poll messages in the broker (ready now, all), per account, and due polls
        parked in Redis; plus each account's lag as the last sweep saw it."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zcount(self.keys.flight, "-inf", now)
            pipe.zcard(self.keys.flight)
            pipe.hgetall(self.keys.flight_n)
            pipe.zcount(self.keys.sched, "-inf", now)
            ready, total, per_account, due = pipe.execute()
        return {
            "ready": int(ready),
            "in_broker": int(total),
            "by_account": {codec.text(k): int(v) for k, v in per_account.items()},
            "due_in_redis": int(due),
        }
