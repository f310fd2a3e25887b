"""End to end: a real redis-server, real worker and beat processes, the simulator over HTTP."""

from __future__ import annotations

import collections
import signal
from typing import Any

import pytest

from export_poller.api import get_export, track_export
from export_poller.processes import stand_in
from export_poller.providers.simulator.client import SimulatorClient
from tests.integration.conftest import PREFIX, Fleet, callback_sigs, wait_for

pytestmark = pytest.mark.integration

MIX = [
    ("chaossearch", {"outcome": "completed", "running_polls": 3}, "completed"),
    ("chaossearch", {"outcome": "failed", "running_polls": 2}, "failed"),
    ("saymon", {"outcome": "completed", "running_polls": 3}, "completed"),
    ("biodatacatalyst", {"outcome": "completed", "running_polls": 2}, "completed"),
    ("biodatacatalyst", {"outcome": "failed", "running_polls": 2}, "failed"),
    ("cometly", {"outcome": "completed", "running_polls": 2}, "completed"),
    ("cometly", {"outcome": "failed", "running_polls": 1}, "failed"),
    ("cgc", {"outcome": "completed", "running_polls": 3}, "completed"),
    ("cgc", {"outcome": "failed", "running_polls": 1}, "failed"),
]


def track_cases(
    sim: SimulatorClient, cases: list[tuple[str, dict[str, Any], str]]
) -> dict[str, str]:
    expected = {}
    for provider, job, state in cases:
        export_id = str(sim.create_job(provider=provider, pending_polls=1, **job))
        expected[track_export(provider, export_id, timeout=120, **callback_sigs())] = state
    return expected


def assert_one_callback_each(fleet: Fleet, expected: dict[str, str]) -> None:
    callbacks = fleet.wait_for_callbacks(len(expected))
    per_export = collections.Counter(c["record"]["tracking_id"] for c in callbacks)
    assert per_export == dict.fromkeys(expected, 1)
    for entry in callbacks:
        record = entry["record"]
        want = expected[record["tracking_id"]]
        assert record["state"] == want
        assert entry["label"] == ("on_complete" if want == "completed" else "on_failure")
        assert get_export(record["tracking_id"])["state"] == want  # type: ignore[index]
    assert fleet.r.zcard(f"{PREFIX}:outbox") == 0 and fleet.r.zcard(f"{PREFIX}:sched") == 0


def test_every_export_ends_in_its_state_with_exactly_one_callback(
    fleet: Fleet, sim_client: SimulatorClient
) -> None:
    fleet.worker()
    fleet.beat()
    expected = track_cases(sim_client, MIX)
    unknown = track_export("cgc", "noSuchExport000", timeout=120, **callback_sigs())
    expected[unknown] = "failed"
    assert_one_callback_each(fleet, expected)
    record = get_export(unknown)
    assert record and record["error"]["kind"] == "not_found" and record["attempts"] == 3


def test_a_worker_killed_mid_run_loses_no_export_and_doubles_no_callback(
    fleet: Fleet, sim_client: SimulatorClient
) -> None:
    victim = fleet.worker("victim", concurrency=2)
    fleet.worker("survivor", concurrency=2)
    fleet.beat()
    providers = ["chaossearch", "saymon", "biodatacatalyst", "cgc"]
    cases = [
        (providers[i % 4], {"outcome": "completed", "running_polls": 6 + i % 5}, "completed")
        for i in range(40)
    ]
    expected = track_cases(sim_client, cases)
    wait_for(lambda: sim_client.stats()["total"] >= 100, 60, "the fleet to be mid-run")
    assert "poll tracking_id=" in victim.output() and len(fleet.callbacks()) < len(expected)
    victim.kill(signal.SIGKILL)
    fleet.worker("replacement", concurrency=2)
    assert_one_callback_each(fleet, expected)


def test_a_poll_message_replayed_by_hand_is_ignored(
    fleet: Fleet, sim_client: SimulatorClient
) -> None:
    from export_poller.celery import app

    export_id = str(sim_client.create_job(provider="saymon", pending_polls=1, running_polls=1))
    stand_in(fleet.env)  # tracked before the worker starts
    tid = track_export("saymon", export_id, timeout=120, **callback_sigs())
    first_token = fleet.r.hget(f"{PREFIX}:x:{tid}", "token")
    worker = fleet.worker(loglevel="DEBUG")  # a dropped stale message is said at DEBUG
    fleet.wait_for_callbacks(1)
    polls = sim_client.job("saymon", export_id)["polls"]
    app.send_task("exports.poll", args=(tid, first_token))
    wait_for(
        lambda: f"poll dropped tracking_id={tid} reason=stale" in worker.output(),
        30,
        "the worker to drop the replayed message",
    )
    assert sim_client.job("saymon", export_id)["polls"] == polls
    assert len(fleet.callbacks()) == 1
