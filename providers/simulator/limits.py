"""Per-credential rate limits in fixed windows, as Cometly (30/min per Space) and Seven Bridges
(1000 per 5 min per token) enforce them, plus the busiest window seen, which is how a test proves
that the poller stayed under a provider's limit."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from export_poller.providers.simulator.options import RateLimit


@dataclass(frozen=True, slots=True)
class LimitState:
    """The limiter's answer for one request; `reset_at` is the Unix time the window ends."""

    limit: int
    remaining: int
    reset_at: float
    exceeded: bool

    def retry_after(self, now: float) -> int:
        """Whole seconds until the window ends, rounded up so a client never retries early."""
        # Rounded first: `now + 3 - now` may be 3.0000000000000004, which must not become 4.
        return max(0, math.ceil(round(self.reset_at - now, 6)))


@dataclass(slots=True)
class _Window:
    start: float
    allowed: int = 0
    seen: int = 0
    busiest: int = 0
    throttled: int = 0


@dataclass(frozen=True)
class WindowStats:
    busiest: int
    throttled: int


class RateLimiter:
    """One window per (provider, credential); providers without a limit are never counted."""

    def __init__(self, limits: Mapping[str, RateLimit | None]) -> None:
        self._initial = {name: limit for name, limit in limits.items() if limit is not None}
        self._limits = dict(self._initial)
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}

    def configure(self, provider: str, limit: RateLimit | None) -> None:
        """Change one provider's limit at run time (`POST /_sim/limits`); windows restart."""
        with self._lock:
            if limit is None:
                self._limits.pop(provider, None)
            else:
                self._limits[provider] = limit
            for key in [k for k in self._windows if k[0] == provider]:
                del self._windows[key]

    def limits(self) -> dict[str, str]:
        with self._lock:
            return {name: str(limit) for name, limit in sorted(self._limits.items())}

    def limit_for(self, provider: str) -> RateLimit | None:
        return self._limits.get(provider)

    def hit(self, provider: str, credential: str, now: float) -> LimitState | None:
        """Count one request; rejected requests count as seen but do not use up the quota."""
        limit = self._limits.get(provider)
        if limit is None:
            return None
        with self._lock:
            window = self._window(provider, credential, limit, now)
            window.seen += 1
            window.busiest = max(window.busiest, window.seen)
            exceeded = window.allowed >= limit.limit
            if exceeded:
                window.throttled += 1
            else:
                window.allowed += 1
            return LimitState(
                limit=limit.limit,
                remaining=limit.limit - window.allowed,
                reset_at=window.start + limit.window_s,
                exceeded=exceeded,
            )

    def _window(self, provider: str, credential: str, limit: RateLimit, now: float) -> _Window:
        window = self._windows.get((provider, credential))
        if window is None:
            window = self._windows[(provider, credential)] = _Window(start=now)
        elif now >= window.start + limit.window_s:
            window.start, window.allowed, window.seen = now, 0, 0
        return window

    def snapshot(self) -> dict[tuple[str, str], WindowStats]:
        with self._lock:
            return {
                key: WindowStats(busiest=window.busiest, throttled=window.throttled)
                for key, window in self._windows.items()
            }

    def reset(self) -> None:
        """Forget the windows and go back to the limits the simulator started with."""
        with self._lock:
            self._windows.clear()
            self._limits = dict(self._initial)
