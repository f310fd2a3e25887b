"""Fleet-wide admission per account, shared by every worker through Redis.

Three guards run before a request leaves: an account hold (a provider's 429 speaks for the
whole account, so every worker waits until its `Retry-After` / `X-RateLimit-Reset`), the
account's rate limit (the `limits` library, moving window, Redis storage: Celery's own
`rate_limit` is per worker and cannot honour a provider's global cap) and a circuit breaker that
pauses all of an account's polls together when its answers are mostly 5xx or timeouts. A
held-back poll is rescheduled, never busy-waited.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import limits
import redis
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from export_poller.account import rules
from export_poller.config.settings import Settings
from export_poller.records import as_text
from export_poller.store import lua


@dataclass(frozen=True)
class GateReading:
    """An account's shared gate as a train reads it: seconds to wait (None: go), its learned
    pace (requests per second, None: unpaced), and whether it was held in the last minutes."""

    wait: float | None
    pace: float | None
    held_lately: bool


class AccountGuard:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.r = client
        self.prefix = f"{settings.key_prefix}:brk"
        self.metrics = f"{settings.key_prefix}:metrics"
        self._limiter: MovingWindowRateLimiter | None = None
        self._hold = lua.register(client, "hold")
        self._pace = lua.register(client, "pace")

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        if self._limiter is None:
            url = self.settings.redis_url
            storage = RedisStorage(
                url, self.r.connection_pool, key_prefix=f"{self.settings.key_prefix}:rl"
            )
            # Share this process's client (its pool, TLS and password) with the limiter.
            storage.storage = self.r
            storage.initialize_storage(url)
            self._limiter = MovingWindowRateLimiter(storage)
        return self._limiter

    def take_slot(self, account: str, now: float) -> float | None:
        """The whole gate for a request on its own (a refresh): the hold and the breaker, then
        a slot of the configured rate limit. None to go, or seconds to wait."""
        wait = self.read(account, now).wait
        return wait if wait is not None else self.take_rate_slot(account, now)

    def take_rate_slot(self, account: str, now: float) -> float | None:
        """One request's slot of the account's configured rate limit (POLLER_ACCOUNTS__X__
        RATE_LIMIT): None to go (the slot is spent), or seconds to wait. A train reads the
        hold and the breaker itself, at its start, after a failure and every quarter second,
        not before every request."""
        item = (
            _limit(self.settings.accounts[account].rate_limit)
            if account in self.settings.accounts
            else None
        )
        if item is None or self.limiter.hit(item, account):
            return None
        reset = self.limiter.get_window_stats(item, account).reset_time
        return max(0.05, reset - time.time())

    def read(self, account: str, now: float) -> GateReading:
        """In one round trip: how long the account must wait (hold, open breaker), its learned
        pace, and whether it was held lately."""
        base = f"{self.prefix}:{account}"
        keys = [f"{base}:open", f"{base}:hold", f"{base}:pace", f"{base}:lim"]
        values = cast(list[Any], self.r.mget(keys))
        until = max((float(v) for v in values[:2] if v is not None), default=0.0)
        wait = until - now if until > now else None
        return GateReading(wait, _pace(values[2], now), values[3] is not None)

    def take_pace_slot(self, account: str, now: float, rate: float) -> float | None:
        """One request's slot at the account's learned pace: None to go, or seconds to wait."""
        args = [repr(now), repr(1.0 / rate), repr(rules.pace_tolerance(rate))]
        wait = as_text(self._pace(keys=[f"{self.prefix}:{account}:tat"], args=args))
        return float(wait) if wait else None

    def slow_down(self, account: str, now: float) -> float:
        """A 429 from a provider that states no budget: pace the account at 70% of what the
        fleet was sending (measured by the breaker's counts); returns the new pace."""
        s, base = self.settings, f"{self.prefix}:{account}"
        window = int(now // s.breaker_window)
        keys = [f"{base}:{kind}:{w}" for w in (window - 1, window) for kind in ("t", "t0")]
        old_calls, old_since, calls, since = cast(list[Any], self.r.mget(keys))
        first = old_since if old_calls is not None and old_since is not None else since
        total = int(old_calls or 0) + int(calls or 0)
        sent = rules.sent_rate(total, float(first) if first is not None else now, now)
        current = _pace(self.r.get(f"{base}:pace"), now)
        rate = rules.slowed_rate(current, sent)
        self.r.set(f"{base}:pace", f"{rate!r}|{now!r}", ex=int(rules.PACE_MEMORY))
        return rate

    def pace(self, account: str, now: float) -> float | None:
        """The account's learned pace now, if it has one (for status and metrics)."""
        return _pace(self.r.get(f"{self.prefix}:{account}:pace"), now)

    def hold(self, account: str, until: float, now: float, *, reason: str = "429") -> bool:
        """Hold the account fleet-wide until `until` (Unix time); True if that moved it on.
        `reason` is "429" (the provider said so) or "budget" (its stated budget is spent)."""
        keep_ms = max(1, int((until - now) * 1000)) + 1000
        field = f"holds|{account}|{reason}"
        return bool(
            self._hold(
                keys=[
                    f"{self.prefix}:{account}:hold",
                    self.metrics,
                    f"{self.prefix}:{account}:lim",
                ],
                args=[repr(until), keep_ms, field, int(rules.PACE_MEMORY)],
            )
        )

    def held_until(self, account: str, now: float) -> float | None:
        """When the account's hold ends, if it is held now (for status and metrics)."""
        value = self.r.get(f"{self.prefix}:{account}:hold")
        until = float(cast(Any, value)) if value is not None else 0.0
        return until if until > now else None

    def count_answers(self, account: str, now: float, *, calls: int = 1, failures: int = 0) -> bool:
        """Count answers (`failures` of `calls` were 5xx or timeouts); True when they tripped
        the breaker. A train counts its healthy answers in one call, failures as they come."""
        s = self.settings
        window = int(now // s.breaker_window)
        base = f"{self.prefix}:{account}"
        ttl = int(2 * s.breaker_window) + 1
        with self.r.pipeline(transaction=False) as pipe:
            pipe.incrby(f"{base}:t:{window}", calls)
            pipe.expire(f"{base}:t:{window}", ttl)
            pipe.set(f"{base}:t0:{window}", repr(now), nx=True, ex=ttl)  # for the sent rate
            pipe.incrby(f"{base}:f:{window}", failures)
            pipe.expire(f"{base}:f:{window}", ttl)
            pipe.exists(f"{base}:trips")
            total, _, _, failed, _, tripped_before = pipe.execute()
        if not rules.breaker_trips(
            total, failed, min_calls=s.breaker_min_calls, ratio=s.breaker_ratio
        ):
            if tripped_before and total >= s.breaker_min_calls:
                self.r.delete(f"{base}:trips")  # a healthy window: the next trip starts short
            return False
        return self._trip(base, window, now)

    def _trip(self, base: str, window: int, now: float) -> bool:
        s = self.settings
        trips = int(cast(Any, self.r.incr(f"{base}:trips")))
        self.r.expire(f"{base}:trips", int(4 * s.breaker_max_cooldown))
        cooldown = rules.breaker_cooldown(
            trips, base=s.breaker_cooldown, maximum=s.breaker_max_cooldown
        )
        self.r.set(f"{base}:open", repr(now + cooldown), px=int(cooldown * 1000))
        self.r.delete(f"{base}:t:{window}", f"{base}:f:{window}")
        return True

    def breaker_state(self, account: str, now: float) -> str:
        """ "open" while the account's breaker pauses its polls, else "closed"."""
        open_until = self.r.get(f"{self.prefix}:{account}:open")
        return "open" if open_until is not None and float(cast(Any, open_until)) > now else "closed"


@cache
def _limit(text: str | None) -> limits.RateLimitItem | None:
    return limits.parse(text) if text else None


def _pace(value: Any, now: float) -> float | None:
    """A stored pace "rate|since", grown back to what it is now."""
    if value is None:
        return None
    rate, _, since = as_text(value).partition("|")
    return rules.paced_rate(float(rate), float(since), now)
