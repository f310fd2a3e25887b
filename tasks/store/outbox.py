"""The callback outbox, its dead letters, and the callback signatures records refer to."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

import redis
from redis.client import Pipeline

from export_poller.store import codec, lua
from export_poller.store.keys import Keys
from export_poller.store.part import Part

# Seconds a signature outlives the last export known to name it.
_SIG_SLACK = 3600.0


class Outbox(Part):
    """Callbacks waiting for dispatch, and the ones given up on."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        super().__init__(client, keys)
        self._claim_outbox = lua.register(client, "claim_outbox")

    def outbox_due(self, now: float, limit: int) -> list[str]:
        ids = self.r.zrangebyscore(self.keys.outbox, "-inf", now, start=0, num=limit)
        return [codec.text(x) for x in cast(list[Any], ids)]

    def claim_outbox(self, tid: str, *, now: float, retry_at: float) -> dict[str, str] | None:
        """Take one callback to dispatch; None if another dispatcher has it or it is gone."""
        reply = self._claim_outbox(
            keys=[self.keys.outbox, self.keys.record(tid)], args=[tid, now, retry_at]
        )
        if not reply:
            return None
        return codec.fields(reply)

    def ack_outbox(
        self,
        tid: str,
        *,
        now: float,
        ttl: float,
        provider: str = "",
        lag: float | None = None,
        pipeline: Pipeline | None = None,
    ) -> None:
        """Done with a callback; its lag (terminal state -> dispatch) feeds the metrics. On
        the caller's `pipeline` if given, else in a transaction of its own."""
        k = self.keys
        with self.r.pipeline(transaction=True) as own:
            pipe = own if pipeline is None else pipeline
            pipe.zrem(k.outbox, tid)
            if lag is not None:
                pipe.hincrby(k.metrics, f"callbacks|{provider}", 1)
                pipe.hincrbyfloat(k.metrics, f"callback_lag_sum|{provider}", max(lag, 0.0))
            pipe.hset(k.record(tid), "callback_at", codec.encode(now))
            pipe.expire(k.record(tid), int(ttl))
            if pipeline is None:
                own.execute()

    def drop_outbox(self, tid: str, pipeline: Pipeline | None = None) -> None:
        (pipeline or self.r).zrem(self.keys.outbox, tid)

    def fail_outbox(self, tid: str, *, now: float, error: str, most: int, ttl: float) -> bool:
        """Count a failed dispatch; at `most` failures the callback is moved aside to the
        dead-letter set, so one bad signature is never retried forever. True when moved."""
        key = self.keys.record(tid)
        failures = cast(int, self.r.hincrby(key, "callback_failures", 1))
        if failures < most:
            return False
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.outbox, tid)
            pipe.zadd(self.keys.deadletter, {tid: now})
            pipe.hset(key, mapping={"callback_error": error, "callback_dead_at": codec.encode(now)})
            pipe.expire(key, int(ttl))
            pipe.execute()
        return True


class Signatures(Part):
    """Callback signatures, stored once and shared by every export naming them."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        super().__init__(client, keys)
        self._sig_expiry: dict[str, float] = {}

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
