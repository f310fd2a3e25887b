"""Counters behind `GET /_sim/stats`: what each provider and each credential was asked and
answered, so tests and benchmarks can check the poller's behaviour from the provider's side."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from export_poller.providers.simulator.limits import WindowStats
from export_poller.providers.simulator.options import PROVIDERS
from export_poller.providers.simulator.wsgi import Response

UNAUTHENTICATED = "(unauthenticated)"
"""Credential label of refused requests: a wrong secret must not become a stats key."""

RESET = "reset"
"""Status label of requests answered by dropping the connection."""

LOG_SIZE = 50_000
"""Requests kept in the log behind `GET /_sim/requests` (the most recent ones)."""


def stated_until(response: Response, now: float) -> float | None:
    """The time a 429 told the client to wait for: `Retry-After` or `X-RateLimit-Reset`."""
    if response.status != 429:
        return None
    headers = dict(response.headers)
    if "Retry-After" in headers:
        return now + float(headers["Retry-After"])
    if "X-RateLimit-Reset" in headers:
        return float(headers["X-RateLimit-Reset"])
    return None


class Stats:
    """Recorded once the answer is known, so a status counted here is what the client got."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], Counter[str]] = {}
        self._log: deque[tuple[float, str, str, int, float | None]] = deque(maxlen=LOG_SIZE)

    def record(self, provider: str, credential: str, status: int | str) -> None:
        key = (provider, credential)
        with self._lock:
            counter = self._answers.get(key)
            if counter is None:
                counter = self._answers[key] = Counter()
            counter[str(status)] += 1

    def log(self, provider: str, credential: str, now: float, response: Response) -> None:
        """Keep when each request arrived and, for a 429, until when it said to wait: how a
        test proves that no request came before a provider's stated time."""
        entry = (now, provider, credential, response.status, stated_until(response, now))
        with self._lock:
            self._log.append(entry)

    def requests(self, provider: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._log)
        return [
            {"at": at, "provider": name, "credential": cred, "status": status, "until": until}
            for at, name, cred, status, until in entries
            if provider is None or name == provider
        ]

    def reset(self) -> None:
        with self._lock:
            self._answers.clear()
            self._log.clear()

    def snapshot(self, windows: Mapping[tuple[str, str], WindowStats]) -> dict[str, Any]:
        """Per provider totals with a per credential breakdown; every provider is listed."""
        with self._lock:
            answers = {key: Counter(counter) for key, counter in self._answers.items()}
        providers = {name: _provider_row(name, answers, windows) for name in PROVIDERS}
        total = sum(row["requests"] for row in providers.values())
        return {"total": total, "providers": providers}


def _provider_row(
    name: str,
    answers: Mapping[tuple[str, str], Counter[str]],
    windows: Mapping[tuple[str, str], WindowStats],
) -> dict[str, Any]:
    credentials = {
        credential: _row(counter, windows.get((provider, credential)))
        for (provider, credential), counter in sorted(answers.items())
        if provider == name
    }
    return _merge(credentials)


def _row(counter: Counter[str], window: WindowStats | None, throttled: int = 0) -> dict[str, Any]:
    return {
        "requests": sum(counter.values()),
        "statuses": dict(sorted(counter.items())),
        "rate_limited": counter.get("429", 0),
        "throttled": window.throttled if window is not None else throttled,
        "max_in_window": window.busiest if window is not None else None,
    }


def _merge(credentials: dict[str, dict[str, Any]]) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    for row in credentials.values():
        statuses.update(row["statuses"])
    busiest = [row["max_in_window"] for row in credentials.values() if row["max_in_window"]]
    merged = _row(statuses, None, sum(row["throttled"] for row in credentials.values()))
    merged["max_in_window"] = max(busiest, default=None)
    merged["credentials"] = credentials
    return merged
