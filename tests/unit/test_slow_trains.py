"""Within an account, a train stops behind a request that timed out."""

from __future__ import annotations

from export_poller.engine import Engine
from export_poller.providers import errors
from tests.unit.conftest import Broker, Clock, ScriptedProvider
from tests.unit.test_engine import track


def test_the_rest_of_a_train_waits_instead_of_queueing_behind_a_timeout(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("slow", errors.TransportError("cometly did not answer within 30 s"))
    tids = [track(engine, export_id) for export_id in ("slow", "e2", "e3")]
    pairs = [(tid, token) for tid, token, _ in broker.take_polls()]
    engine.poll(*pairs[0], more=pairs[1:])
    assert provider.calls == ["slow"]
    held = [engine.get(tid) or {} for tid in tids[1:]]
    assert [r["error"]["kind"] for r in held] == ["throttled", "throttled"]
    assert all(r["attempts"] == 0 for r in held)  # holding back is not an attempt
    waits = sorted(countdown for _, _, countdown in broker.polls)
    assert waits[-1] >= engine.settings.backoff_initial
