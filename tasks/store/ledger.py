"""The backlog ledger: poll messages in the broker, counted so the fleet keeps their number bounded
and shares it fairly among accounts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from export_poller.store import codec, lua
from export_poller.store.codec import Arg
from export_poller.store.keys import Keys
from export_poller.store.part import Part


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
        args: list[Arg] = [now, cap, f"{self.keys.prefix}:", grace, account]
        for pairs, due in messages:
            args += [due, len(pairs)]
            for tid, token in pairs:
                args += [tid, token]
        return [bool(x) for x in self._admit(keys=[self.keys.flight], args=args)]

    def share_state(self, now: float, grace: float) -> tuple[int, dict[str, tuple[int, int]]]:
        """Ready messages of the fleet, and per account (due polls, ready messages)."""
        flat = self._share_state(keys=[self.keys.flight], args=[now, f"{self.keys.prefix}:", grace])
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
        args: list[Arg] = [now, rescue_at, f"{self.keys.prefix}:", grace]
        for account, most, size in wants:
            args += [account, most, size]
        send, expired = self._take_due(keys=[self.keys.sched], args=args)
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
