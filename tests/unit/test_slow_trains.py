"""Within an account, a train stops behind a request that timed out."""

from __future__ import annotations

import threading
from typing import Any

from export_poller.config.settings import Settings
from export_poller.engine import Engine
from export_poller.providers import errors
from export_poller.store import Store
from tests.unit.conftest import Broker, Clock, ScriptedProvider
from tests.unit.test_engine import engine_for, track


def test_the_rest_of_a_train_waits_instead_of_queueing_behind_a_timeout(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("slow", errors.TransportError("cometly did not answer within 30 s"))
    tids = [track(engine, export_id) for export_id in ("slow", "e2", "e3")]
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    engine.poll(*pairs[0], more=pairs[1:], account=broker.account_of[pairs[0][0]])
    assert provider.calls == ["slow"]
    held = [engine.get(tid) or {} for tid in tids[1:]]
    assert [r["error"]["kind"] for r in held] == ["throttled", "throttled"]
    assert all(r["attempts"] == 0 for r in held)  # holding back is not an attempt
    waits = sorted(countdown for _, _, countdown in broker.polls)
    assert waits[-1] >= engine.settings.backoff_initial


def test_an_export_that_timed_out_before_never_holds_back_its_train(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    """A message that names a trickling export first (its own follow-up) and a healthy one after
    it: the healthy one is asked and settled before the slow one is asked again, every time."""
    timeout = errors.TransportError("cometly did not answer within 30 s")
    provider.script("slow", timeout)
    slow, healthy = track(engine, "slow"), track(engine, "e2")
    broker.take_polls()
    engine.store.r.hset(engine.store.key(slow), "error_kind", errors.TransportError.kind)
    settled_first = []
    real_fetch = provider.fetch

    def fetch(export_id: str) -> Any:
        if export_id == "slow":
            settled_first.append((engine.get(healthy) or {}).get("attempts"))
        return real_fetch(export_id)

    provider.fetch = fetch  # type: ignore[method-assign]
    for attempt in (1, 2, 3):
        tokens = {tid: rec["token"] for tid in (slow, healthy) if (rec := engine.store.get(tid))}
        engine.poll(slow, tokens[slow], [(healthy, tokens[healthy])])
        assert settled_first[-1] == attempt  # the healthy export was committed before
        assert (engine.get(healthy) or {})["state"] == "running"
        fake_clock.advance(600)
    assert provider.calls == ["e2", "slow"] * 3


def test_a_run_never_takes_along_an_export_polled_less_than_the_floor_ago(
    settings: Settings, store: Store, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    """POLLER_BACKOFF_FLOOR: no poll comes sooner than it after the last, even for an export
    due within the floor that another run of its account could take along."""
    floor = settings.model_copy(update={"backoff_floor": 5.0})
    engine = engine_for(provider, floor, store, broker, parallel=1, rand=lambda: 1.0)
    first, second = track(engine, "e1"), track(engine, "e2")
    broker.take_polls()
    tokens = {tid: (engine.store.get(tid) or {})["token"] for tid in (first, second)}
    engine.poll(second, tokens[second])  # e2 polled alone; its next poll is 5 s on
    fake_clock.advance(1)
    engine.store.r.zadd(engine.store.keys.due("scripted"), {second: fake_clock()})  # due now
    engine.poll(first, tokens[first])  # a run of e1 one second later: e2 stays behind
    assert provider.calls == ["e2", "e1"]
    fake_clock.advance(5)
    engine.store.r.zadd(engine.store.keys.due("scripted"), {second: fake_clock()})
    engine.poll(first, (engine.store.get(first) or {})["token"])  # past the floor: taken along
    assert sorted(provider.calls[2:]) == ["e1", "e2"]


def test_after_a_fresh_timeout_the_exports_that_timed_out_before_wait_too(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    """The provider just timed out on a healthy export: an export known to trickle is not sent
    to it next (a second request deadline for the thread); it waits a backoff step."""
    timeout = errors.TransportError("cometly did not answer within 30 s")
    provider.script("e2", timeout)
    provider.script("slow", timeout)
    tids = [track(engine, export_id) for export_id in ("e2", "slow")]
    engine.store.r.hset(engine.store.key(tids[1]), "error_kind", errors.TransportError.kind)
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    engine.poll(*pairs[0], more=pairs[1:], account=broker.account_of[pairs[0][0]])
    assert provider.calls == ["e2"]
    assert (engine.get(tids[1]) or {})["error"]["kind"] == "throttled"


def test_a_first_trickling_answer_does_not_hold_back_its_wave_mates_callbacks(
    settings: Settings, store: Store, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    """Nothing marks an export that has never trickled, so it shares a wave with healthy ones:
    those are committed (their callbacks sent) once the train's time has passed, while its
    request is still out, not when it finally ends."""
    called_back = threading.Event()
    real_send = broker.send_callback

    def send_callback(*args: Any, **kwargs: Any) -> Any:
        called_back.set()
        return real_send(*args, **kwargs)

    broker.send_callback = send_callback  # type: ignore[method-assign]
    quick = settings.model_copy(update={"train_seconds": 0.05})
    engine = engine_for(provider, quick, store, broker, parallel=8, rand=lambda: 1.0)
    warm = track(engine, "warm")  # a calm train first: the next one asks a whole wave at once
    engine.poll(*broker.take_polls()[0][:2])
    provider.script("done", "completed")
    done, slow = track(engine, "done"), track(engine, "slow")
    seen: list[str] = []
    real_fetch = provider.fetch

    def fetch(export_id: str) -> Any:
        if export_id == "slow":  # trickles until its neighbour's callback has gone out
            assert called_back.wait(10), "the neighbour's callback waited on this request"
            seen.append((engine.get(done) or {}).get("state", ""))
        return real_fetch(export_id)

    provider.fetch = fetch  # type: ignore[method-assign]
    pairs = [(tid, token) for tid, token, _ in broker.take_polls() if tid in (done, slow)]
    engine.poll(*pairs[0], more=pairs[1:])
    assert seen == ["completed"]  # committed while the slow request was still out
    assert [r["tracking_id"] for _, r in broker.callbacks] == [done]
    assert (engine.get(slow) or {})["state"] == "running" and warm
