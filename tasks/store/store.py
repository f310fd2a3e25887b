"""The store: every read and atomic write of tracked exports, as one object.

Every change of state is one Lua script, so two workers, two beats or a replayed message can
never both move an export or both dispatch its callback. Broker messages carry only tracking ids
and poll tokens; a message whose token is not the record's current one does nothing.
"""

from __future__ import annotations

from typing import Any, cast

import redis

from export_poller.store import codec
from export_poller.store.claims import Claims
from export_poller.store.keys import Keys
from export_poller.store.ledger import Ledger
from export_poller.store.outbox import Outbox, Signatures
from export_poller.store.records import Records


class Store(Records, Claims, Ledger, Outbox, Signatures):
    """Every part of the store on one client and one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "ep") -> None:
        super().__init__(client, Keys(prefix))
        self.prefix = prefix
        keys = self.keys
        self.sched, self.outbox, self.deadletter = keys.sched, keys.outbox, keys.deadletter
        self.metrics, self.idem, self.accounts = keys.metrics, keys.idem, keys.accounts
        self.flight, self.flight_n, self.waiting = keys.flight, keys.flight_n, keys.waiting

    def key(self, tid: str) -> str:
        return self.keys.record(tid)

    def due_key(self, account: str) -> str:
        return self.keys.due(account)

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
