"""Domain metrics in Prometheus format, read from Redis at scrape time.

The counters are kept by the store's own scripts (one `{prefix}:metrics` hash), so every
worker's work is counted once, whichever process serves the scrape, and nothing is lost when a
worker restarts. Served by `export-poller metrics --port 9808`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from export_poller.engine import Engine

_WAITS = ("rate_limited", "throttled")
_PROBLEMS = ("misconfigured", "credentials_refused")


def _split(fields: dict[str, float]) -> dict[str, dict[tuple[str, ...], float]]:
    """`kind|label|label` hash fields grouped by kind."""
    grouped: dict[str, dict[tuple[str, ...], float]] = {}
    for name, value in fields.items():
        kind, *labels = name.split("|")
        grouped.setdefault(kind, {})[tuple(labels)] = value
    return grouped


class PollerCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        grouped = _split(self.engine.store.metric_fields())
        yield from _exports(grouped)
        yield from _polls(grouped)
        yield self._lag(grouped)
        yield from self._overload(grouped)
        yield self._breakers()
        yield self._holds()
        yield self._paces()
        yield from self._queues()

    def _queues(self) -> Iterator[Metric]:
        counts = self.engine.store.counts()
        yield GaugeMetricFamily(
            "export_poller_scheduled", "Exports with a scheduled poll", value=counts["scheduled"]
        )
        yield GaugeMetricFamily(
            "export_poller_outbox", "Callbacks waiting to be dispatched", value=counts["outbox"]
        )
        yield GaugeMetricFamily(
            "export_poller_dead_letters",
            "Callbacks given up after POLLER_CALLBACK_ATTEMPTS failed dispatches",
            value=counts["deadletter"],
        )

    def _lag(self, grouped: dict[str, dict[tuple[str, ...], float]]) -> Metric:
        summary = SummaryMetricFamily(
            "export_poller_callback_lag_seconds",
            "Terminal state seen -> callback dispatched",
            labels=["provider"],
        )
        sums = grouped.get("callback_lag_sum", {})
        for labels, count in grouped.get("callbacks", {}).items():
            summary.add_metric(
                list(labels), count_value=int(count), sum_value=sums.get(labels, 0.0)
            )
        return summary

    def _overload(self, grouped: dict[str, dict[tuple[str, ...], float]]) -> Iterator[Metric]:
        """Is the fleet keeping up? Lag per account, and the backlog against its bound."""
        yield _family(
            GaugeMetricFamily,
            "export_poller_account_lag_seconds",
            "How late the account's most overdue poll was at the last sweep (0: on schedule)",
            ["account"],
            grouped.get("lag", {}),
        )
        yield _family(
            CounterMetricFamily,
            "export_poller_polls_parked",
            "Poll messages kept in Redis by the backlog bound, for the fair sweep to send",
            ["account"],
            grouped.get("parked", {}),
        )
        view = self.engine.backlog_view()
        gauge = GaugeMetricFamily(
            "export_poller_backlog_messages",
            "Poll messages in the broker: ready now, or all of them (countdowns included)",
            labels=["kind"],
        )
        gauge.add_metric(["ready"], view["ready"])
        gauge.add_metric(["in_broker"], view["in_broker"])
        yield gauge
        yield GaugeMetricFamily(
            "export_poller_backlog_bound",
            "POLLER_BACKLOG_MAX: ready poll messages the fleet keeps in the broker at most",
            value=view["bound"],
        )
        yield GaugeMetricFamily(
            "export_poller_due_in_redis",
            "Polls due now that wait in Redis (parked, or lost and not yet rescued)",
            value=view["due_in_redis"],
        )

    def _breakers(self) -> Metric:
        gauge = GaugeMetricFamily(
            "export_poller_breaker_open",
            "1 while an account's circuit breaker is open",
            labels=["account"],
        )
        guard, now = self.engine.guard, time.time()
        for account in sorted(self.engine.settings.accounts):
            is_open = guard is not None and guard.breaker_state(account, now) == "open"
            gauge.add_metric([account], float(is_open))
        return gauge

    def _holds(self) -> Metric:
        gauge = GaugeMetricFamily(
            "export_poller_account_held_seconds",
            "Seconds until an account's fleet-wide hold ends (0 when it is not held)",
            labels=["account"],
        )
        guard, now = self.engine.guard, time.time()
        for account in sorted(self.engine.settings.accounts):
            until = guard.held_until(account, now) if guard is not None else None
            gauge.add_metric([account], 0.0 if until is None else until - now)
        return gauge

    def _paces(self) -> Metric:
        gauge = GaugeMetricFamily(
            "export_poller_account_pace",
            "Requests per second an account is paced at after 429s (absent while unpaced)",
            labels=["account"],
        )
        guard, now = self.engine.guard, time.time()
        for account in sorted(self.engine.settings.accounts):
            rate = guard.pace(account, now) if guard is not None else None
            if rate is not None:
                gauge.add_metric([account], rate)
        return gauge


def _exports(grouped: dict[str, dict[tuple[str, ...], float]]) -> Iterator[Metric]:
    yield _family(
        GaugeMetricFamily,
        "export_poller_active_exports",
        "Tracked exports not yet finished",
        ["provider", "state"],
        grouped.get("active", {}),
    )
    yield _family(
        CounterMetricFamily,
        "export_poller_finished",
        "Exports that reached a terminal state",
        ["provider", "state"],
        grouped.get("finished", {}),
    )


def _polls(grouped: dict[str, dict[tuple[str, ...], float]]) -> Iterator[Metric]:
    """Polls by outcome, and what they tell an operator about accounts: waits, holds and
    problems."""
    polls = grouped.get("polls", {})
    yield _family(
        CounterMetricFamily,
        "export_poller_polls",
        "Polls by outcome (provider state or error kind)",
        ["provider", "outcome"],
        polls,
    )
    waits = {k: v for k, v in polls.items() if k[1] in _WAITS}
    yield _family(
        CounterMetricFamily,
        "export_poller_rate_limit_waits",
        "Polls held back by a provider 429 or the fleet-wide limit/breaker",
        ["provider", "source"],
        waits,
    )
    yield _family(
        CounterMetricFamily,
        "export_poller_account_holds",
        "Fleet-wide holds of an account: a provider's 429, or its stated budget spent",
        ["account", "reason"],
        grouped.get("holds", {}),
    )
    problems = {k: v for k, v in polls.items() if k[1] in _PROBLEMS}
    yield _family(
        CounterMetricFamily,
        "export_poller_account_problems",
        "Polls that found an account missing on a worker or its credentials refused",
        ["provider", "kind"],
        problems,
    )


def _family(
    cls: Any, name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]
) -> Metric:
    family = cls(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        if len(key) == len(labels):
            family.add_metric(list(key), value)
    metric: Metric = family
    return metric


def serve(engine: Engine, host: str, port: int) -> None:
    """Serve /metrics until interrupted."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(PollerCollector(engine))
    start_http_server(port, addr=host, registry=registry)
    while True:
        time.sleep(3600)
