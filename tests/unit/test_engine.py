"""The engine over a fake Redis: messages are hints, the record is the truth."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from export_poller import clock
from export_poller.account.guard import AccountGuard
from export_poller.config.settings import Settings
from export_poller.engine import Engine
from export_poller.providers import errors
from export_poller.providers.models import ExportStatus
from export_poller.store import Store
from tests.unit.conftest import Broker, Clock, FakePool, ScriptedProvider

SIG_OK = {"task": "myapp.export_ready", "args": [], "kwargs": {}, "options": {}}
SIG_FAIL = {"task": "myapp.export_failed", "args": [], "kwargs": {}, "options": {}}


def track(engine: Engine, export_id: str = "e1", timeout: float = 3600) -> str:
    fields = {
        "provider": "scripted",
        "account": "scripted",
        "export_id": export_id,
        "metadata": {"report": "daily"},
        "on_complete": SIG_OK,
        "on_failure": SIG_FAIL,
    }
    return engine.track(fields, timeout)


def deliver(engine: Engine, broker: Broker, clock: Clock) -> list[str]:
    """Deliver every pending poll message, advancing the clock to its countdown."""
    results = []
    for tid, token, countdown in broker.take_polls():
        clock.advance(countdown)
        results.append(engine.poll(tid, token, account=broker.account_of[tid]))
    return results


def run_to_end(engine: Engine, broker: Broker, clock: Clock, limit: int = 50) -> None:
    for _ in range(limit):
        if not broker.polls:
            return
        deliver(engine, broker, clock)


def test_tracks_polls_with_backoff_and_fires_one_callback(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", "pending", "running", "running", "completed")
    tid = track(engine)
    run_to_end(engine, broker, fake_clock)
    assert len(broker.callbacks) == 1
    sig, record = broker.callbacks[0]
    assert sig["task"] == SIG_OK["task"] and sig["args"] == []
    assert record["tracking_id"] == tid and record["state"] == "completed"
    assert record["attempts"] == 4 and record["metadata"] == {"report": "daily"}
    assert record["status"]["state"] == "completed"
    assert engine.get(tid)["callback_at"] is not None  # type: ignore[index]


def test_backoff_countdowns_grow(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    track(engine)
    countdowns = []
    for _ in range(4):
        deliver(engine, broker, fake_clock)
        countdowns.append(broker.polls[0][2])
    assert countdowns == [5.0, 10.0, 20.0, 40.0]


def test_tracking_the_same_export_twice_returns_one_id_and_one_callback(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", "running", "completed")
    first, second = track(engine), track(engine)
    assert first == second and len(broker.polls) == 1
    run_to_end(engine, broker, fake_clock)
    assert len(broker.callbacks) == 1
    assert track(engine) != first  # finished: tracking it again is a new tracking


def test_replayed_and_duplicate_messages_do_nothing(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", "running", "completed")
    tid = track(engine)
    [(_, first_token, _)] = broker.polls
    deliver(engine, broker, fake_clock)
    assert engine.poll(tid, first_token) == "stale"  # the same message again
    run_to_end(engine, broker, fake_clock)
    assert engine.poll(tid, first_token) == "stale"
    assert len(provider.calls) == 2 and len(broker.callbacks) == 1


def test_two_workers_never_poll_the_same_export_at_once(
    engine: Engine, store: Store, broker: Broker, fake_clock: Clock
) -> None:
    tid = track(engine)
    [(_, token, _)] = broker.polls
    claim = store.claim(
        tid, token, "worker-a", account="scripted", now=fake_clock(), lease_until=fake_clock() + 120
    )
    assert not isinstance(claim, str)
    assert engine.poll(tid, token) == "busy"


def test_a_lost_poll_message_is_rescued_by_the_sweep(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", "running", "completed")
    tid = track(engine)
    broker.take_polls()  # the message is lost
    fake_clock.advance(10)
    assert engine.sweep().enqueued == 0  # not yet overdue
    fake_clock.advance(25)
    assert engine.sweep().enqueued == 1
    assert engine.sweep().enqueued == 0  # one rescue per grace period, not one per sweep
    run_to_end(engine, broker, fake_clock)
    assert [r["tracking_id"] for _, r in broker.callbacks] == [tid]


def test_a_worker_dying_mid_poll_is_rescued_after_its_lease(
    engine: Engine, store: Store, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", "completed")
    tid = track(engine)
    [(_, token, _)] = broker.take_polls()
    store.claim(
        tid,
        token,
        "dead-worker",
        account="scripted",
        now=fake_clock(),
        lease_until=fake_clock() + 120,
    )
    fake_clock.advance(119)
    assert engine.sweep().enqueued == 0
    fake_clock.advance(2)
    assert engine.sweep().enqueued == 1
    run_to_end(engine, broker, fake_clock)
    assert len(broker.callbacks) == 1 and engine.get(tid)["state"] == "completed"  # type: ignore[index]


def test_long_waits_are_parked_in_redis_not_handed_to_celery(
    settings: object, engine: Engine, broker: Broker, fake_clock: Clock
) -> None:
    track(engine)
    for _ in range(4):  # 5, 10, 20, 40 s: all inside the 60 s horizon
        deliver(engine, broker, fake_clock)
    deliver(engine, broker, fake_clock)  # next wait is 80 s: parked
    assert broker.polls == []
    fake_clock.advance(79)
    assert engine.sweep().enqueued == 0
    fake_clock.advance(1)
    assert engine.sweep().enqueued == 1


def test_deadline_expiry_times_out_once_with_the_failure_callback(
    engine: Engine, broker: Broker, fake_clock: Clock
) -> None:
    tid = track(engine, timeout=100)
    broker.take_polls()  # every message lost: only the sweep can end it
    fake_clock.advance(100 + 31)
    report = engine.sweep()
    assert report.expired == 1 and report.enqueued == 0
    assert engine.sweep().expired == 0
    record = engine.get(tid)
    assert record and record["state"] == "timed_out"
    assert [sig["task"] for sig, _ in broker.callbacks] == [SIG_FAIL["task"]]


def test_polls_stop_at_the_deadline_and_time_out(
    engine: Engine, broker: Broker, fake_clock: Clock
) -> None:
    tid = track(engine, timeout=30)
    run_to_end(engine, broker, fake_clock)
    record = engine.get(tid)
    assert record and record["state"] == "timed_out"
    assert fake_clock() - record["created_at"] == 30  # the last poll was at the deadline
    assert len(broker.callbacks) == 1


def test_callback_survives_a_broker_failure_through_the_outbox(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", "completed")
    tid = track(engine)
    broker.fail_callbacks = 1
    deliver(engine, broker, fake_clock)
    assert broker.callbacks == [] and engine.get(tid)["state"] == "completed"  # type: ignore[index]
    assert engine.sweep().callbacks == 0  # claimed by the failed attempt until the grace ends
    fake_clock.advance(31)
    assert engine.sweep().callbacks == 1
    fake_clock.advance(31)
    assert engine.sweep().callbacks == 0
    assert len(broker.callbacks) == 1


def test_failure_callback_carries_the_providers_error(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", errors.NotFound("gone"))
    tid = track(engine)
    run_to_end(engine, broker, fake_clock)
    [(sig, record)] = broker.callbacks
    assert sig["task"] == SIG_FAIL["task"]
    assert record["state"] == "failed" and record["attempts"] == 3
    assert record["error"]["kind"] == "not_found"
    assert engine.get(tid)["state"] == "failed"  # type: ignore[index]


def test_cancel_stops_polling_and_fires_nothing(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    tid = track(engine)
    assert engine.cancel(tid) is True
    assert deliver(engine, broker, fake_clock) == ["stale"]
    assert engine.cancel(tid) is False
    fake_clock.advance(10_000)
    report = engine.sweep()
    assert (report.enqueued, report.expired, report.callbacks) == (0, 0, 0)
    assert broker.callbacks == [] and provider.calls == []


def test_a_poll_in_flight_when_cancelled_cannot_finish_the_export(
    engine: Engine, store: Store, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", "completed")
    tid = track(engine)
    [(_, token, _)] = broker.take_polls()
    claim = store.claim(
        tid, token, "w", account="scripted", now=fake_clock(), lease_until=fake_clock() + 120
    )
    assert not isinstance(claim, str)
    engine.cancel(tid)
    assert engine.settler.settle([claim], {tid: provider.fetch("e1")}) == {tid: "lost"}
    assert broker.callbacks == [] and engine.get(tid)["state"] == "cancelled"  # type: ignore[index]


def test_an_adapter_bug_is_retried_not_fatal(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    def broken(export_id: str) -> None:
        raise KeyError("surprise")

    provider.fetch = broken  # type: ignore[assignment,method-assign]
    tid = track(engine)
    assert deliver(engine, broker, fake_clock) == ["pending"]
    record = engine.get(tid)
    assert record and record["error"]["kind"] == "bad_response" and broker.polls


class SlowProvider(ScriptedProvider):
    """Every request takes `seconds` of the fake clock."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def fetch(self, export_id: str) -> ExportStatus | errors.ProviderError:
        self.clock.advance(self.seconds)
        return super().fetch(export_id)


def test_polls_of_one_account_ride_together_once_the_provider_is_timed(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    tids = [track(engine, f"e{i}") for i in range(120)]
    assert len(broker.messages) == 120  # tracking sends one first poll each
    first = broker.take_messages()
    engine.poll(*first[0][0][0])  # unmeasured provider: this run polls one export
    assert len(provider.calls) == 1
    for pairs, _ in first[1:]:
        engine.poll(*pairs[0], pairs[1:], broker.account_of[pairs[0][0]])
    # every export polled once, by runs of up to 50 (train_max), whatever message named it
    assert sorted(provider.calls) == sorted(f"e{i}" for i in range(120))
    follow = broker.take_messages()
    assert [len(pairs) for pairs, _ in follow] == [1, 50, 50, 19]
    fake_clock.advance(max(c for _, c in follow))
    for pairs, _ in follow:
        engine.poll(*pairs[0], pairs[1:], broker.account_of[pairs[0][0]])
    # runs took due exports from each other's messages: trains merged to ceil(120 / 50)
    assert len(provider.calls) == 240 and len(set(provider.calls)) == 120
    assert sorted(len(pairs) for pairs, _ in broker.messages) == [20, 50, 50]
    assert {engine.get(t)["attempts"] for t in tids} == {2}  # type: ignore[index]


def engine_for(
    provider: ScriptedProvider,
    settings: Settings,
    store: Store,
    broker: Broker,
    *,
    parallel: int,
    **options: Any,
) -> Engine:
    """An engine over one scripted provider, asking `parallel` requests of a train at once."""
    return Engine(
        settings.model_copy(update={"train_parallel": parallel}),
        store,
        broker.send_poll,
        broker.send_callback,
        providers=FakePool(provider),  # type: ignore[arg-type]
        **options,
    )


def test_a_slow_provider_gets_short_trains_and_the_rest_is_passed_on(
    settings: Settings, store: Store, broker: Broker, fake_clock: Clock
) -> None:
    provider = SlowProvider(fake_clock, seconds=0.4)  # 1 s budget: two or three per run
    # one request after another
    engine = engine_for(provider, settings, store, broker, parallel=1, rand=lambda: 1.0)
    for i in range(10):
        track(engine, f"e{i}")
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    engine.poll(*pairs[0], pairs[1:], broker.account_of[pairs[0][0]])  # one message naming all ten
    assert len(provider.calls) == 3  # out of time after 1.2 s: the other seven go on now,
    passed_on = [m for m in broker.take_messages() if m[1] == 0.0]
    assert [len(pairs) for pairs, _ in passed_on] == [2, 2, 2, 1]  # in trains of 1 s each
    for pairs, _ in passed_on:
        engine.poll(*pairs[0], pairs[1:], broker.account_of[pairs[0][0]])
    assert len(provider.calls) == 10 and len(set(provider.calls)) == 10


class MeetingProvider(ScriptedProvider):
    """After the first request, each waits until `parties` requests are in flight at once:
    asked one after another, a request would wait alone and raise BrokenBarrierError."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)
        self.threads: set[str] = set()

    def fetch(self, export_id: str) -> ExportStatus | errors.ProviderError:
        if self.calls:
            self.barrier.wait()
            self.threads.add(threading.current_thread().name)
        return super().fetch(export_id)


def test_the_requests_of_one_train_are_in_flight_together(
    settings: Settings, store: Store, broker: Broker
) -> None:
    provider = MeetingProvider(parties=4)
    engine = engine_for(provider, settings, store, broker, parallel=4, rand=lambda: 1.0)
    for i in range(9):
        track(engine, f"e{i}")
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    states = engine.poll(
        *pairs[0], pairs[1:], broker.account_of[pairs[0][0]]
    )  # the first alone, then two waves of four
    assert states == "running" and sorted(provider.calls) == [f"e{i}" for i in range(9)]
    assert len(provider.threads) == 4  # this thread and three request threads
    assert sorted(len(p) for p, _ in broker.take_messages()) == [9]  # one follow-up message


class SignalledGuard(AccountGuard):
    """An account guard that says when a hold was written."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.held = threading.Event()

    def hold(self, account: str, until: float, now: float, *, reason: str = "429") -> bool:
        moved = super().hold(account, until, now, reason=reason)
        self.held.set()
        return moved


class SlowNeighbourProvider(ScriptedProvider):
    """e1 is answered 429 at once; e2, asked in the same wave, answers only once the account's
    hold is written (or after 5 s): a hold written when the wave ends would keep it waiting."""

    def __init__(self, held: threading.Event) -> None:
        super().__init__()
        self.held, self.saw_hold = held, False
        self.script("e1", errors.RateLimited("slow down", retry_after=30.0))

    def fetch(self, export_id: str) -> ExportStatus | errors.ProviderError:
        if export_id == "e2":
            self.saw_hold = self.held.wait(timeout=5)
        return super().fetch(export_id)


def test_a_429_holds_the_account_before_the_rest_of_its_wave_is_answered(
    settings: Settings, store: Store, broker: Broker
) -> None:
    guard = SignalledGuard(settings, store.r)
    provider = SlowNeighbourProvider(guard.held)
    engine = engine_for(provider, settings, store, broker, parallel=4, guard=guard)
    for i in range(4):
        track(engine, f"e{i}")
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    engine.poll(
        *pairs[0], pairs[1:], broker.account_of[pairs[0][0]]
    )  # e0 alone, then e1 e2 e3 in one wave
    assert provider.saw_hold  # written by the thread that read the 429, mid-wave
    assert guard.held_until("scripted", clock.now()) is not None
    assert store.r.hget(guard.metrics, "holds|scripted|429") == b"1"  # one 429, one hold


class PairingProvider(ScriptedProvider):
    """Counts requests in flight; each of `pairs` waits for a partner, so a wave that mixed
    them with others would leave one waiting alone (BrokenBarrierError)."""

    def __init__(self, pairs: set[str]) -> None:
        super().__init__()
        self.pairs, self.barrier = pairs, threading.Barrier(2, timeout=5)
        self.lock, self.active = threading.Lock(), 0
        self.seen: dict[str, int] = {}

    def fetch(self, export_id: str) -> ExportStatus | errors.ProviderError:
        with self.lock:
            self.active += 1
            self.seen[export_id] = self.active
        if export_id in self.pairs:
            self.barrier.wait()
        with self.lock:
            self.active -= 1
        return super().fetch(export_id)


def test_in_waves_an_export_whose_last_request_timed_out_is_asked_alone(
    settings: Settings, store: Store, broker: Broker
) -> None:
    provider = PairingProvider({"e1", "e2", "e4", "e5"})
    engine = engine_for(provider, settings, store, broker, parallel=4)
    tids = [track(engine, f"e{i}") for i in range(6)]
    store.r.hset(store.key(tids[3]), "error_kind", errors.TransportError.kind)
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    engine.poll(
        *pairs[0], pairs[1:], broker.account_of[pairs[0][0]]
    )  # waves: e0 | e1 e2 | e3 alone | e4 e5
    assert sorted(provider.calls) == [f"e{i}" for i in range(6)]
    assert provider.seen["e3"] == 1


def test_runs_looking_for_due_exports_skip_the_ones_other_runs_hold(
    engine: Engine, store: Store, broker: Broker, fake_clock: Clock
) -> None:
    for i in range(250):
        track(engine, f"e{i}")
    now = fake_clock()
    taken = [
        store.claim_due("scripted", run, now=now, lease_until=now + 120, due_by=now, limit=100)
        for run in ("run-a", "run-b", "run-c", "run-d")
    ]
    assert [len(t) for t in taken] == [100, 100, 50, 0]
    assert len({c.tracking_id for t in taken for c in t}) == 250
    store.release(taken[0], rescue_at=now + 30)  # given back: the next run finds them again
    again = store.claim_due(
        "scripted", "run-e", now=now, lease_until=now + 120, due_by=now, limit=100
    )
    assert {c.tracking_id for c in again} == {c.tracking_id for c in taken[0]}


def test_runs_that_read_the_due_index_together_still_fill_their_trains(
    engine: Engine, store: Store, broker: Broker, fake_clock: Clock
) -> None:
    """A burst read by many runs at once (a bulk provider's 1,000 exports, 16 threads): a run
    whose candidates the others took first reads what is still due, not sending a short train."""
    for i in range(12):
        track(engine, f"e{i}")
    now = fake_clock()
    read_together = store.r.zrangebyscore(store.keys.due("scripted"), "-inf", now, 0, 8)
    candidates = [x.decode() for x in read_together]
    kw: dict[str, Any] = {"now": now, "lease_until": now + 120, "due_by": now, "limit": 4}
    first = store.claim_due("scripted", "run-a", candidates=candidates, **kw)
    second = store.claim_due("scripted", "run-b", candidates=candidates, **kw)
    third = store.claim_due("scripted", "run-c", candidates=candidates, **kw)
    assert [len(first), len(second), len(third)] == [4, 4, 4]
    assert len({c.tracking_id for c in first + second + third}) == 12


def test_a_run_takes_along_the_due_exports_after_the_ones_its_message_named(
    engine: Engine, store: Store, broker: Broker, fake_clock: Clock
) -> None:
    """The claim moves the exports its message names to their lease's end in the account's due
    index at once: the run's look for more due exports must not find its own there, or they
    would crowd out the ones it should take along."""
    tids = []
    for i in range(6):  # due one second apart: the message names the three most overdue
        tids.append(track(engine, f"e{i}"))
        fake_clock.advance(1)
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    now = fake_clock()
    named = store.claim_many(pairs[:3], "run", account="scripted", now=now, lease_until=now + 120)
    assert all(not isinstance(c, str) for c in named)
    more = store.claim_due("scripted", "run", now=now, lease_until=now + 120, due_by=now, limit=2)
    assert len(more) == 2 and {c.tracking_id for c in more} <= set(tids[3:])


def test_an_accounts_lag_leaves_out_the_exports_being_polled(
    engine: Engine, store: Store, broker: Broker, fake_clock: Clock
) -> None:
    """The lag an operator sees (status, metrics) is how late the most overdue poll that is
    not running is: an export whose poll holds its lease is not late."""
    first = track(engine, "e1")
    fake_clock.advance(10)
    track(engine, "e2")
    token = next(tok for tid, tok, _ in broker.take_polls() if tid == first)
    now = fake_clock()
    assert not isinstance(
        store.claim(first, token, "run", account="scripted", now=now, lease_until=now + 120), str
    )
    fake_clock.advance(50)
    engine.sweep()
    assert store.account_lags() == {"scripted": pytest.approx(50)}


def test_a_worker_without_the_account_says_so_loudly_and_keeps_the_export(
    settings: Settings,
    store: Store,
    broker: Broker,
    fake_clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from export_poller.account.request import ProviderPool

    engine = Engine(
        settings,
        store,
        broker.send_poll,
        broker.send_callback,
        providers=ProviderPool(settings.model_copy(update={"accounts": {}})),
        rand=lambda: 1.0,
    )
    tid = track(engine)
    with caplog.at_level(logging.INFO, logger="export_poller.poll"):
        deliver(engine, broker, fake_clock)
    record = engine.get(tid) or {}
    assert record["state"] == "pending" and record["error"]["kind"] == "misconfigured"
    assert "not configured" in record["error"]["message"]
    assert any(r.levelno >= logging.ERROR and "scripted" in r.getMessage() for r in caplog.records)
    assert store.metric_fields()["polls|scripted|misconfigured"] == 1
