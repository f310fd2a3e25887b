"""Counters behind `GET /_sim/stats`: what each provider and each credential was asked and
answered, so tests and benchmarks can check the poller's behaviour from the provider's side."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from export_poller.providers.simulator.limits import WindowStats
from export_poller.providers.simulator.options import PROVIDERS

UNAUTHENTICATED = "(unauthenticated)"
"""Credential label of refused requests: a wrong secret must not become a stats key."""

RESET = "reset"
"""Status label of requests answered by dropping the connection."""


class Stats:
    """Recorded once the answer is known, so a status counted here is what the client got."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], Counter[str]] = {}

    def record(self, provider: str, credential: str, status: int | str) -> None:
        key = (provider, credential)
        with self._lock:
            counter = self._answers.get(key)
            if counter is None:
                counter = self._answers[key] = Counter()
            counter[str(status)] += 1

    def reset(self) -> None:
        with self._lock:
            self._answers.clear()

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
