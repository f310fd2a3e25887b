"""A callback that cannot be dispatched is moved aside; it never blocks the sweep or others."""

from __future__ import annotations

from typing import Any

import pytest

from export_poller.engine import Engine
from export_poller.store import Store
from tests.unit.conftest import Broker, Clock, ScriptedProvider
from tests.unit.test_engine import SIG_OK, deliver

POISON = {"task": "myapp.takes_no_args", "args": [], "kwargs": {}, "options": {}}


class PickyBroker(Broker):
    """Refuses one task the way Celery refuses arguments that do not fit a local task."""

    def send_callback(self, sig: dict[str, Any], record: dict[str, Any]) -> None:
        if sig["task"] == POISON["task"]:
            raise TypeError("takes_no_args() takes 0 positional arguments but 1 was given")
        super().send_callback(sig, record)


@pytest.fixture
def broker() -> Broker:
    return PickyBroker()


def _track(engine: Engine, export_id: str, sig: dict[str, Any]) -> str:
    fields = {"provider": "scripted", "account": "scripted", "export_id": export_id}
    return engine.track({**fields, "on_complete": sig}, 3600)


def test_a_poisoned_callback_is_dead_lettered_and_the_others_flow(
    engine: Engine,
    broker: Broker,
    provider: ScriptedProvider,
    store: Store,
    fake_clock: Clock,
) -> None:
    provider.script("bad", "completed")
    provider.script("good", "running", "completed")
    bad = _track(engine, "bad", POISON)
    good = _track(engine, "good", SIG_OK)
    deliver(engine, broker, fake_clock)  # bad completes, its dispatch fails (1 of 5)
    for _ in range(6):  # each sweep after the grace retries it once, and never raises
        fake_clock.advance(31)
        engine.sweep()
        deliver(engine, broker, fake_clock)
    assert [record["tracking_id"] for _, record in broker.callbacks] == [good]
    assert store.counts()["deadletter"] == 1 and store.counts()["outbox"] == 0
    record = store.get(bad) or {}
    assert record["callback_failures"] == "5"
    assert record["callback_error"].startswith("TypeError: takes_no_args()")
    view = engine.get(bad) or {}  # what get_export and `status` show an operator
    assert view["callback_error"] == record["callback_error"]
    assert view["callback_dead_at"] == float(record["callback_dead_at"])


def test_a_broker_outage_is_not_counted_against_the_callback(
    engine: Engine, broker: Broker, provider: ScriptedProvider, store: Store, fake_clock: Clock
) -> None:
    provider.script("e1", "completed")
    tid = _track(engine, "e1", SIG_OK)
    broker.fail_callbacks = 8  # ConnectionError: the broker, not the callback, is at fault
    deliver(engine, broker, fake_clock)
    for _ in range(8):
        fake_clock.advance(31)
        engine.sweep()
    assert [record["tracking_id"] for _, record in broker.callbacks] == [tid]
    assert store.counts()["deadletter"] == 0
