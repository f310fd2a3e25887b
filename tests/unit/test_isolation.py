"""Bulk requests with a poison id, account-wide holds and strict not-before times."""

from __future__ import annotations

import fakeredis
import pytest

from export_poller.account import rules
from export_poller.engine import Engine
from export_poller.providers import errors
from export_poller.providers.answer import Budget
from export_poller.providers.models import ExportStatus
from tests.unit.conftest import Broker, Clock, ScriptedProvider
from tests.unit.test_guards import make_engine, make_settings, one_train, track

Answer = ExportStatus | errors.ProviderError


class PoisonBulk(ScriptedProvider):
    """A bulk provider whose whole request fails (`failure`) whenever it names a poison id."""

    batch_size = 100

    def __init__(self, poison: set[str], failure: errors.ProviderError) -> None:
        super().__init__()
        self.poison, self.failure = poison, failure
        self.requests: list[list[str]] = []

    def fetch_many(self, export_ids: list[str]) -> dict[str, Answer]:
        self.requests.append(list(export_ids))
        if self.poison & set(export_ids):
            raise self.failure
        return {e: ExportStatus(state="completed") for e in export_ids}


def run(
    client: fakeredis.FakeRedis,
    provider: ScriptedProvider,
    broker: Broker,
    count: int,
    **kw: object,
) -> tuple[Engine, list[str]]:
    engine = make_engine(make_settings(**kw), client, provider, broker)
    tids = [track(engine, f"e{i}") for i in range(count)]
    one_train(engine, broker)
    return engine, tids


def states(engine: Engine, tids: list[str]) -> list[str]:
    return [(engine.get(t) or {})["state"] for t in tids]


@pytest.mark.parametrize(
    "failure",
    [
        errors.Rejected("400", status_code=400),
        errors.ServerError("500", status_code=500),
        errors.BadResponse("not JSON"),
        errors.NotFound("404", status_code=404),
    ],
    ids=["400", "500", "off-spec", "404"],
)
def test_a_poison_id_is_found_by_bisecting_and_its_neighbours_complete(
    redis_client: fakeredis.FakeRedis,
    broker: Broker,
    fake_clock: Clock,
    failure: errors.ProviderError,
) -> None:
    provider = PoisonBulk({"e37"}, failure)
    engine, tids = run(redis_client, provider, broker, 100)
    got = states(engine, tids)
    assert got.count("completed") == 99 and got[37] == "pending"
    assert len(provider.requests) <= 1 + 2 * 7  # O(log n): two requests per level
    assert ["e37"] in provider.requests
    record = engine.get(tids[37]) or {}
    assert record["error"]["kind"] in ("poisoned", "rejected", "not_found")
    assert engine.guard and engine.guard.breaker_state("scripted", fake_clock()) == "closed"


def test_the_poison_id_fails_alone_after_the_usual_confirmations(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = PoisonBulk({"e3"}, errors.ServerError("500", status_code=500))
    engine = make_engine(make_settings(), redis_client, provider, broker)
    tids = [track(engine, f"e{i}") for i in range(8)]
    for _ in range(3):  # each round the poison is found again; neighbours finished in round 1
        one_train(engine, broker)
        fake_clock.advance(30)
        engine.sweep()
    got = states(engine, tids)
    assert got[3] == "failed" and got.count("completed") == 7
    record = engine.get(tids[3]) or {}
    assert record["error"]["kind"] == "poisoned" and record["attempts"] == 3


def test_auth_failures_rate_limits_and_maintenance_are_never_bisected(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    for failure in (
        errors.CredentialsRefused("401", status_code=401),
        errors.RateLimited("429", retry_after=5),
        errors.Maintenance("503 code 0", status_code=503),
        errors.TransportError("timeout"),
    ):
        provider = PoisonBulk({"e1"}, failure)
        redis_client.flushall()
        run(redis_client, provider, broker, 50)
        assert len(provider.requests) == 1, failure.kind
        broker.take_messages()


def test_an_outage_costs_a_bounded_number_of_requests_and_trips_the_breaker(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = PoisonBulk({f"e{i}" for i in range(100)}, errors.ServerError("502"))
    engine, tids = run(redis_client, provider, broker, 100)
    assert len(provider.requests) <= 1 + rules.bisect_allowance(100)
    assert set(states(engine, tids)) == {"pending"}
    assert all((engine.get(t) or {})["error"]["kind"] == "server_error" for t in tids)
    assert engine.guard and engine.guard.breaker_state("scripted", fake_clock()) == "open"


def test_a_429_holds_the_whole_account_fleet_wide_until_its_stated_time(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = ScriptedProvider()
    provider.script("e2", errors.RateLimited("429", retry_after=7))
    engine, tids = run(redis_client, provider, broker, 6, train_parallel=1)
    assert provider.calls == ["e0", "e1", "e2"]  # the rest of the train waited with it
    assert engine.guard
    held = engine.guard.held_until("scripted", fake_clock())
    assert held == pytest.approx(fake_clock() + 7)
    for tid in tids[2:]:
        record = engine.get(tid) or {}
        assert record["not_before"] >= fake_clock() + 7
        assert record["account_held_until"] == pytest.approx(held)
    other = make_engine(make_settings(), redis_client, provider, broker)  # another worker
    tid = track(other, "late")
    [(pairs, _)] = broker.messages[-1:]
    other.poll(*pairs[0])
    assert "late" not in provider.calls and (other.get(tid) or {})["not_before"] >= held
    assert redis_client.hget("ep:metrics", "holds|scripted|429") == b"1"


def test_a_429_in_a_wave_stops_the_train_after_that_wave(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = ScriptedProvider()
    provider.script("e2", errors.RateLimited("429", retry_after=7))
    engine, tids = run(redis_client, provider, broker, 12, train_parallel=4)
    # e0 alone, then e1-e4 together (e2 answers 429); nothing leaves after that answer
    assert sorted(provider.calls) == ["e0", "e1", "e2", "e3", "e4"]
    for tid in tids[5:]:
        assert (engine.get(tid) or {})["not_before"] >= fake_clock() + 7


def test_a_poll_never_runs_before_a_providers_stated_time(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = ScriptedProvider()
    provider.script("e0", errors.RateLimited("429", retry_after=4), "completed")
    engine, [tid] = run(redis_client, provider, broker, 1)
    not_before = (engine.get(tid) or {})["not_before"]
    [(pairs, countdown)] = broker.take_messages()
    assert countdown >= 4
    fake_clock.advance(3)  # early by one second: our own backoff would allow it, this not
    assert engine.poll(*pairs[0]) == "wait"
    assert provider.calls == ["e0"]
    [(again, countdown)] = broker.take_messages()  # re-sent for the stated time
    assert again == pairs and fake_clock() + countdown == pytest.approx(not_before, abs=0.01)
    fake_clock.advance(countdown)
    assert engine.poll(*again[0]) == "completed"


def test_a_train_takes_no_export_along_before_its_stated_time(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = ScriptedProvider()
    provider.script("x", errors.RateLimited("429", retry_after=2), "running")
    # rand 0.6: the held export comes back 0.3 s after the hold ends
    engine = make_engine(make_settings(backoff_floor=5), redis_client, provider, broker, rand=0.6)
    x, a = track(engine, "x"), track(engine, "a")
    one_train(engine, broker)
    assert provider.calls == ["x"]
    [(pairs, _)] = [m for m in broker.take_messages() if m[0][0][0] == x]
    fake_clock.advance(2.1)  # past x's time, before a's; a is due within the floor (5 s)
    engine.poll(*pairs[0])
    assert provider.calls == ["x", "x"]
    assert (engine.get(a) or {})["attempts"] == 0


def test_a_stated_budget_spent_holds_the_account_until_it_resets_without_a_429(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = ScriptedProvider()
    provider.budget = Budget(limit=30, remaining=1, reset_at=fake_clock() + 8)
    engine, tids = run(redis_client, provider, broker, 5)
    assert provider.calls == ["e0"]  # one left is the reserve for requests in flight
    assert engine.guard and engine.guard.held_until("scripted", fake_clock()) == pytest.approx(
        fake_clock() + 8
    )
    assert all((engine.get(t) or {})["not_before"] >= fake_clock() + 8 for t in tids[1:])
    assert redis_client.hget("ep:metrics", "holds|scripted|budget") == b"1"
    provider.budget = Budget(limit=30, remaining=20, reset_at=fake_clock() + 8)
    redis_client.flushall()
    run(redis_client, provider, broker, 5)
    assert len(provider.calls) == 6  # plenty left: no hold


def test_budget_arithmetic() -> None:
    assert rules.budget_hold(2, 30, 110.0, 100.0) is None
    assert rules.budget_hold(1, 30, 110.0, 100.0) == 110.0
    assert rules.budget_hold(30, 1000, 400.0, 100.0) == 400.0  # 3% of a large budget
    assert rules.budget_hold(0, None, 110.0, 100.0) == 110.0
    assert rules.budget_hold(0, 30, 90.0, 100.0) is None  # already reset


def test_pace_arithmetic_decreases_on_a_429_and_recovers_gradually() -> None:
    assert rules.slowed_rate(None, 4.0) == pytest.approx(2.8)  # 70% of what was sent
    assert rules.slowed_rate(2.0, 4.0) == pytest.approx(1.4)  # or of the pace, if lower
    assert rules.slowed_rate(None, 0.0) == rules.PACE_MIN
    assert rules.paced_rate(2.8, 100.0, 100.0) == pytest.approx(2.8)
    assert rules.paced_rate(2.8, 100.0, 110.0) == pytest.approx(2.8 * 1.4)  # +4% a second
    assert rules.sent_rate(90, 990.0, 1035.0) == pytest.approx(2.0)
    assert rules.sent_rate(30, 1035.0, 1035.2) == 30.0  # a first burst: at least a second


def test_a_429_from_a_provider_that_states_no_budget_paces_the_account(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = ScriptedProvider()
    provider.script("e0", errors.RateLimited("429", retry_after=2), "running")
    engine = make_engine(make_settings(), redis_client, provider, broker)
    assert engine.guard
    engine.guard.count_answers("scripted", fake_clock() - 30, calls=30)  # 60 in 30 s: 2/s were sent
    engine.guard.count_answers("scripted", fake_clock(), calls=30)
    engine.guard.slow_down("scripted", fake_clock())
    rate = engine.guard.pace("scripted", fake_clock())
    assert rate == pytest.approx(1.4)
    fake_clock.advance(2.5)
    tids = [track(engine, f"p{i}") for i in range(6)]
    one_train(engine, broker)
    assert len(provider.calls) <= 2  # about one second's worth at the pace, not all six
    waiting = [(engine.get(t) or {}) for t in tids if (engine.get(t) or {})["attempts"] == 0]
    assert waiting and all(r["error"]["kind"] == "throttled" for r in waiting)
    fake_clock.advance(60)  # a minute without a 429: the pace has grown back 3.4x
    later = engine.guard.pace("scripted", fake_clock())
    assert later == pytest.approx(rate * (1 + 0.04 * 62.5))


def test_the_pace_slots_are_shared_by_every_worker(
    redis_client: fakeredis.FakeRedis, fake_clock: Clock
) -> None:
    from export_poller.account.guard import AccountGuard

    one, two = (AccountGuard(make_settings(), redis_client) for _ in range(2))
    now = fake_clock()
    granted = [g.take_pace_slot("scripted", now, 2.0) is None for g in (one, two, one, two)]
    assert granted == [True, True, True, False]  # 1 s of tolerance at 2/s, then spaced
    wait = two.take_pace_slot("scripted", now, 2.0)
    assert wait is not None and wait == pytest.approx(0.5)
    assert one.take_pace_slot("scripted", now + 0.5, 2.0) is None


def test_the_table_shows_a_held_account_instead_of_a_countdown() -> None:
    from export_poller.table import next_poll

    record = {"state": "running", "next_poll_at": 105.0, "account_held_until": 104.0}
    assert next_poll(record, now=100.0) == "held 4.0s"
    assert next_poll({**record, "account_held_until": None}, now=100.0) == "5.0s"


def test_a_spent_budget_stops_a_bisection_too(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    provider = PoisonBulk({"e1"}, errors.Rejected("400", status_code=400))
    provider.budget = Budget(limit=30, remaining=0, reset_at=fake_clock() + 5)
    engine, tids = run(redis_client, provider, broker, 10)
    assert len(provider.requests) == 1  # the halves wait for the budget's reset
    assert {(engine.get(t) or {})["error"]["kind"] for t in tids} == {"throttled"}


def test_an_account_held_lately_reads_its_hold_before_every_request(
    redis_client: fakeredis.FakeRedis, broker: Broker, fake_clock: Clock
) -> None:
    class ElsewhereHeld(ScriptedProvider):
        """While it answers e1, another worker receives a 429 for the same account."""

        def fetch(self, export_id: str) -> Answer:
            if export_id == "e1" and engine.guard:
                engine.guard.hold("scripted", fake_clock() + 5, fake_clock())
            return super().fetch(export_id)

    def train_of_five(limited_before: bool) -> list[str]:
        nonlocal engine
        redis_client.flushall()
        provider = ElsewhereHeld()
        engine = make_engine(make_settings(), redis_client, provider, broker)
        if limited_before and engine.guard:  # a hold some minutes ago, long over
            engine.guard.hold("scripted", fake_clock() - 60, fake_clock() - 61)
        for i in range(5):
            track(engine, f"e{i}")
        one_train(engine, broker)
        broker.take_messages()
        return provider.calls

    engine: Engine
    assert train_of_five(limited_before=True) == ["e0", "e1"]
    calls = train_of_five(limited_before=False)  # 0.25 s reads; a wave after the first answer
    assert sorted(calls) == ["e0", "e1", "e2", "e3", "e4"]
