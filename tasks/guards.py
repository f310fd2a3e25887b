"""Fleet-wide admission per account, shared by every worker through Redis.

Two guards run before a request leaves: the account's rate limit (the `limits` library, moving
window, Redis storage: Celery's own `rate_limit` is per worker and cannot honour a provider's
global cap) and a circuit breaker that pauses all of an account's polls together when its
answers are mostly 5xx or timeouts. A held-back poll is rescheduled, never busy-waited.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any, cast

import limits
import redis
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from export_poller import policy
from export_poller.config.settings import Settings


class AccountGuard:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.r = client
        self.prefix = f"{settings.key_prefix}:brk"
        self._limiter: MovingWindowRateLimiter | None = None

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

    def admit(self, account: str, now: float, *, breaker: bool = True) -> float | None:
        """None to go ahead (one request of budget is spent), or how many seconds to wait.

        `breaker=False` skips reading the breaker: a train reads it before its first request
        and after a failure, not before every request of a healthy run.
        """
        if breaker:
            open_until = self.r.get(f"{self.prefix}:{account}:open")
            if open_until is not None and float(cast(Any, open_until)) > now:
                return float(cast(Any, open_until)) - now
        item = (
            _limit(self.settings.accounts[account].rate_limit)
            if account in self.settings.accounts
            else None
        )
        if item is None or self.limiter.hit(item, account):
            return None
        reset = self.limiter.get_window_stats(item, account).reset_time
        return max(0.05, reset - time.time())

    def record(self, account: str, now: float, *, calls: int = 1, failures: int = 0) -> bool:
        """Count answers (`failures` of `calls` were 5xx or timeouts); True when they tripped
        the breaker. A train counts its healthy answers in one call, failures as they come."""
        s = self.settings
        window = int(now // s.breaker_window)
        base = f"{self.prefix}:{account}"
        ttl = int(2 * s.breaker_window) + 1
        with self.r.pipeline(transaction=False) as pipe:
            pipe.incrby(f"{base}:t:{window}", calls)
            pipe.expire(f"{base}:t:{window}", ttl)
            pipe.incrby(f"{base}:f:{window}", failures)
            pipe.expire(f"{base}:f:{window}", ttl)
            pipe.exists(f"{base}:trips")
            total, _, failed, _, tripped_before = pipe.execute()
        if not policy.breaker_trips(
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
        cooldown = policy.breaker_cooldown(
            trips, base=s.breaker_cooldown, maximum=s.breaker_max_cooldown
        )
        self.r.set(f"{base}:open", repr(now + cooldown), px=int(cooldown * 1000))
        self.r.delete(f"{base}:t:{window}", f"{base}:f:{window}")
        return True

    def state(self, account: str, now: float) -> str:
        open_until = self.r.get(f"{self.prefix}:{account}:open")
        return "open" if open_until is not None and float(cast(Any, open_until)) > now else "closed"


@cache
def _limit(text: str | None) -> limits.RateLimitItem | None:
    return limits.parse(text) if text else None
