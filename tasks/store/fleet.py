"""The fleet's roster in Redis: which workers are live and the accounts each one serves.

A worker's entry is one small JSON string that expires by itself (a killed worker sends no
goodbye), and a zset lists the workers so a reader needs no SCAN. An entry holds account names
and providers only: it is what any process that enqueues may read, so never a secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from redis.client import Pipeline

from export_poller.store import codec
from export_poller.store.part import Part


@dataclass(frozen=True)
class Worker:
    """One live worker as its last heartbeat described it."""

    name: str
    accounts: Mapping[str, str]  # account -> provider
    host: str = ""
    pid: int = 0
    seen_at: float = 0.0

    def entry(self) -> str:
        return json.dumps(
            {"accounts": dict(self.accounts), "host": self.host, "pid": self.pid}
            | {"seen_at": self.seen_at},
            sort_keys=True,
        )

    @classmethod
    def from_entry(cls, name: str, raw: str) -> Worker | None:
        """None for an entry this version cannot read (a newer or a broken writer)."""
        try:
            data = json.loads(raw)
            accounts = {str(a): str(p) for a, p in data["accounts"].items()}
            return cls(name, accounts, str(data.get("host", "")), int(data.get("pid", 0)),
                       float(data.get("seen_at", 0.0)))  # fmt: skip
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class Fleet(Part):
    """Heartbeats in, the live roster out."""

    def heartbeat(self, worker: Worker, ttl: float, pipeline: Pipeline | None = None) -> None:
        """Publish (or refresh) a worker's entry for `ttl` seconds; one round trip, and the
        entry and its listing change together (MULTI), so a listed worker has an entry unless
        it expired."""
        with self.r.pipeline(transaction=True) as own:
            pipe = own if pipeline is None else pipeline
            pipe.set(self.keys.worker(worker.name), worker.entry(), px=max(1, int(ttl * 1000)))
            pipe.zadd(self.keys.fleet, {worker.name: worker.seen_at})
            if pipeline is None:
                own.execute()

    def leave(self, name: str, pipeline: Pipeline | None = None) -> None:
        """A worker stopping cleanly drops out at once, not after its entry expires."""
        with self.r.pipeline(transaction=True) as own:
            pipe = own if pipeline is None else pipeline
            pipe.delete(self.keys.worker(name))
            pipe.zrem(self.keys.fleet, name)
            if pipeline is None:
                own.execute()

    def live(self) -> list[Worker]:
        """Every worker whose entry has not expired, by name; two round trips. Listed workers
        whose entries expired are pruned on the way (a worker whose entry expired during a
        long pause is listed again by its next heartbeat)."""
        names = [codec.text(x) for x in cast(list[Any], self.r.zrange(self.keys.fleet, 0, -1))]
        if not names:
            return []
        raws = cast(list[Any], self.r.mget([self.keys.worker(n) for n in names]))
        pairs = list(zip(names, raws, strict=True))
        gone = [name for name, raw in pairs if raw is None]
        read = (Worker.from_entry(n, codec.text(raw)) for n, raw in pairs if raw is not None)
        workers = [w for w in read if w is not None]
        if gone:
            self.r.zrem(self.keys.fleet, *gone)
        return workers
