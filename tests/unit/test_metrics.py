"""Metrics count what happened, whichever process did it, because Redis keeps the counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from export_poller.engine import Engine
from export_poller.metrics import PollerCollector
from export_poller.providers import errors
from tests.unit.conftest import Broker, Clock, ScriptedProvider
from tests.unit.test_engine import run_to_end, track


def scrape(engine: Engine) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(PollerCollector(engine))
    values = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_follow_exports_through_their_states(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("a", "running", errors.RateLimited("slow", retry_after=2), "completed")
    provider.script("b", "running")
    track(engine, "a")
    track(engine, "b")
    before = scrape(engine)
    assert before['export_poller_active_exports{provider="scripted",state="pending"}'] == 2
    for _ in range(3):
        from tests.unit.test_engine import deliver

        deliver(engine, broker, fake_clock)
    after = scrape(engine)
    assert after['export_poller_finished_total{provider="scripted",state="completed"}'] == 1
    assert after['export_poller_active_exports{provider="scripted",state="running"}'] == 1
    assert after['export_poller_active_exports{provider="scripted",state="pending"}'] == 0
    assert after['export_poller_polls_total{outcome="completed",provider="scripted"}'] == 1
    assert (
        after['export_poller_rate_limit_waits_total{provider="scripted",source="rate_limited"}']
        == 1
    )
    assert after['export_poller_callback_lag_seconds_count{provider="scripted"}'] == 1
    assert after['export_poller_breaker_open{account="scripted"}'] == 0
    assert after["export_poller_outbox"] == 0 and after["export_poller_scheduled"] == 1
    run_to_end(engine, broker, fake_clock, limit=3)


def test_holds_and_account_problems_are_counted(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("a", errors.CredentialsRefused("401", status_code=401))
    track(engine, "a")
    from tests.unit.test_engine import deliver

    deliver(engine, broker, fake_clock)
    values = scrape(engine)
    key = 'export_poller_account_problems_total{kind="credentials_refused",provider="scripted"}'
    assert values[key] == 1


def test_overload_is_visible_as_lag_and_backlog(
    engine: Engine, broker: Broker, fake_clock: Clock
) -> None:
    track(engine, "a")
    track(engine, "b")
    fake_clock.advance(12)  # their first polls were never run
    engine.sweep()
    values = scrape(engine)
    assert values['export_poller_account_lag_seconds{account="scripted"}'] == 12.0
    assert values['export_poller_backlog_messages{kind="in_broker"}'] == 2
    assert values["export_poller_backlog_bound"] == 10_000
    deliver_all(engine, broker)
    after = scrape(engine)
    assert after['export_poller_backlog_messages{kind="ready"}'] == 0


def deliver_all(engine: Engine, broker: Broker) -> None:
    for pairs, _ in broker.take_messages():
        engine.poll(*pairs[0], pairs[1:], broker.account_of[pairs[0][0]])
