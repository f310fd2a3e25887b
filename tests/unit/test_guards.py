"""Fleet-wide guards: the shared rate limit, the per-account breaker, and bulk batching."""

from __future__ import annotations

import fakeredis
import pytest

from export_poller import clock
from export_poller.account.guard import AccountGuard
from export_poller.config.settings import AccountSettings, Settings
from export_poller.engine import Engine
from export_poller.providers import errors
from export_poller.providers.models import ExportStatus
from export_poller.store import Store
from tests.unit.conftest import Broker, Clock, FakePool, ScriptedProvider


def make_settings(**kw: object) -> Settings:
    accounts = {"scripted": AccountSettings(provider="scripted", rate_limit=kw.pop("limit", None))}
    return Settings(_env_file=None, accounts=accounts, **kw)  # type: ignore[call-arg,arg-type]


def make_engine(
    settings: Settings,
    client: fakeredis.FakeRedis,
    provider: ScriptedProvider,
    broker: Broker,
    rand: float = 0.0,
) -> Engine:
    return Engine(
        settings,
        Store(client, settings.key_prefix),
        broker.send_poll,
        broker.send_callback,
        providers=FakePool(provider),  # type: ignore[arg-type]
        guard=AccountGuard(settings, client),
        rand=lambda: rand,
    )


def track(engine: Engine, export_id: str) -> str:
    fields = {
        "provider": "scripted",
        "account": "scripted",
        "export_id": export_id,
        "metadata": {},
        "on_complete": "",
        "on_failure": "",
    }
    return engine.track(fields, 3600)


@pytest.fixture
def limited(
    redis_client: fakeredis.FakeRedis, provider: ScriptedProvider, broker: Broker
) -> Engine:
    """An engine whose one account may make three requests a minute."""
    return make_engine(make_settings(limit="3/minute"), redis_client, provider, broker)


def one_train(engine: Engine, broker: Broker) -> None:
    """Deliver every pending poll as a single message, as a train."""
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    engine.poll(*pairs[0], pairs[1:], broker.account_of[pairs[0][0]])


def test_rate_limit_holds_polls_back_without_sending_them(
    redis_client: fakeredis.FakeRedis,
    limited: Engine,
    provider: ScriptedProvider,
    broker: Broker,
    fake_clock: Clock,
) -> None:
    engine = limited
    for i in range(5):
        track(engine, f"e{i}")
    for tid, token, _ in broker.take_polls():
        engine.poll(tid, token, account=broker.account_of[tid])
    assert len(provider.calls) == 3
    records = [engine.get(tid) for tid in engine.store.iter_ids()]
    held = [r for r in records if r and r["attempts"] == 0]
    assert len(held) == 2
    sent = {tid for tid, _, _ in broker.polls}
    for record in records:  # every export has its next poll booked: sent soon, or parked
        assert record
        parked = redis_client.zscore("ep:sched", record["tracking_id"])
        assert record["tracking_id"] in sent or parked == pytest.approx(record["next_poll_at"])
    for record in held:
        assert record and record["error"]["kind"] == "throttled"
        assert 0 < record["next_poll_at"] - fake_clock() <= 61


def test_a_held_back_train_waits_together_and_comes_back_as_one_message(
    limited: Engine, provider: ScriptedProvider, broker: Broker, fake_clock: Clock
) -> None:
    engine = limited
    tids = [track(engine, f"e{i}") for i in range(20)]
    one_train(engine, broker)
    assert len(provider.calls) == 3
    records = [engine.get(tid) or {} for tid in tids]
    held = [r for r in records if r["attempts"] == 0]
    assert len(held) == 17 and len({r["next_poll_at"] for r in held}) == 1
    assert 0 < held[0]["next_poll_at"] - fake_clock() <= 61  # when the window has room
    broker.take_messages()
    fake_clock.advance(held[0]["next_poll_at"] - fake_clock() + 0.01)  # records keep ms
    engine.sweep()  # (the three polled ones are overdue too: their messages were dropped)
    [(sent, _)] = broker.messages
    assert {r["tracking_id"] for r in held} <= {tid for tid, _ in sent}


def test_a_train_counts_the_good_answers_before_a_failure_toward_the_breaker(
    redis_client: fakeredis.FakeRedis, provider: ScriptedProvider, broker: Broker
) -> None:
    settings = make_settings(breaker_min_calls=2, breaker_ratio=0.5)
    engine = make_engine(settings, redis_client, provider, broker)
    for i in range(10):
        provider.script(f"e{i}", errors.ServerError("503") if i >= 8 else "running")
        track(engine, f"e{i}")
    one_train(engine, broker)  # 8 good answers, then 2 failures: 20%, not a failing provider
    assert len(provider.calls) == 10
    assert engine.guard and engine.guard.breaker_state("scripted", clock.now()) == "closed"


def test_answers_before_a_rate_limit_hold_still_count_toward_the_breaker(
    redis_client: fakeredis.FakeRedis, provider: ScriptedProvider, broker: Broker, fake_clock: Clock
) -> None:
    settings = make_settings(limit="3/minute", breaker_min_calls=2, breaker_ratio=0.5)
    engine = make_engine(settings, redis_client, provider, broker)
    for i in range(10):
        track(engine, f"e{i}")
    one_train(engine, broker)  # three good answers, then held back
    assert engine.guard
    assert not engine.guard.count_answers("scripted", fake_clock(), calls=2, failures=2)  # 2 of 5


def test_breaker_opens_on_mostly_5xx_and_holds_every_export_of_the_account(
    redis_client: fakeredis.FakeRedis,
    provider: ScriptedProvider,
    broker: Broker,
    fake_clock: Clock,
) -> None:
    settings = make_settings(breaker_min_calls=4, breaker_ratio=0.5, breaker_cooldown=10)
    engine = make_engine(settings, redis_client, provider, broker)
    for i in range(6):
        provider.script(f"e{i}", errors.ServerError("503"), ExportStatus(state="completed"))
        track(engine, f"e{i}")
    for tid, token, _ in broker.take_polls():
        engine.poll(tid, token, account=broker.account_of[tid])
    assert len(provider.calls) == 4  # the 4th failure opened the breaker; 2 polls never left
    assert engine.guard and engine.guard.breaker_state("scripted", fake_clock()) == "open"


def test_breaker_closes_when_the_provider_recovers(
    redis_client: fakeredis.FakeRedis,
    broker: Broker,
    fake_clock: Clock,
) -> None:
    settings = make_settings(breaker_min_calls=2, breaker_ratio=0.5, breaker_cooldown=10)
    guard = AccountGuard(settings, redis_client)
    now = fake_clock()
    assert not guard.count_answers("scripted", now, failures=1)
    assert guard.count_answers("scripted", now, failures=1)
    assert guard.take_slot("scripted", now) == pytest.approx(10)
    assert guard.take_slot("scripted", now + 10.5) is None  # cooled down: polls flow again
    assert not guard.count_answers("scripted", now + 11)
    assert guard.breaker_state("scripted", now + 11) == "closed"


def test_bulk_providers_coalesce_due_polls_into_one_request(
    redis_client: fakeredis.FakeRedis,
    broker: Broker,
    fake_clock: Clock,
) -> None:
    class Bulk(ScriptedProvider):
        batch_size = 100

        def __init__(self) -> None:
            super().__init__()
            self.requests: list[list[str]] = []

        def fetch_many(
            self, export_ids: list[str]
        ) -> dict[str, ExportStatus | errors.ProviderError]:
            self.requests.append(list(export_ids))
            return {e: ExportStatus(state="completed") for e in export_ids}

    provider = Bulk()
    engine = make_engine(make_settings(), redis_client, provider, broker)
    for i in range(250):
        track(engine, f"e{i}")
    for tid, token, _ in broker.take_polls():
        engine.poll(tid, token, account=broker.account_of[tid])
    assert [len(r) for r in provider.requests] == [100, 100, 50]
    states = {engine.get(tid)["state"] for tid in engine.store.iter_ids()}  # type: ignore[index]
    assert states == {"completed"}
    assert redis_client.zcard("ep:outbox") == 0
