"""Provider contracts under real failure shapes, end to end: a poison id in a CGC bulk request,
a provider's 429 as a hard not-before for the whole account, and a stated budget the fleet
stays inside without any RATE_LIMIT setting. Every figure is counted by the simulator."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from export_poller.api import get_export, track_export
from export_poller.processes import stand_in
from export_poller.providers.simulator.client import SimulatorClient
from tests.integration.conftest import Fleet, callback_sigs, wait_for

pytestmark = pytest.mark.integration


def ended(fleet: Fleet) -> dict[str, str]:
    return {c["record"]["tracking_id"]: c["record"]["state"] for c in fleet.callbacks()}


@pytest.mark.parametrize("poison", ["400", "500", "garbage"])
def test_a_poison_id_fails_alone_and_its_neighbours_complete(
    poison: str, fleet: Fleet, sim_client: SimulatorClient
) -> None:
    specs = [{"provider": "cgc", "pending_polls": 1, "running_polls": 2}] * 12
    healthy = [str(i) for i in sim_client.create_jobs(specs)]
    bad = str(sim_client.create_job("cgc", poison=poison))
    stand_in(fleet.env)  # tracked before the worker starts
    tids = {track_export("cgc", e, timeout=120, **callback_sigs()): e for e in healthy}
    bad_tid = track_export("cgc", bad, timeout=120, **callback_sigs())
    fleet.worker()  # started after tracking: the first train asks for all 13 in one request
    fleet.beat()

    callbacks = fleet.wait_for_callbacks(13)
    states = ended(fleet)
    assert {states[t] for t in tids} == {"completed"} and states[bad_tid] == "failed"
    per_export = collections.Counter(c["record"]["tracking_id"] for c in callbacks)
    assert set(per_export.values()) == {1}
    record = get_export(bad_tid) or {}
    assert record["error"]["kind"] in ("rejected", "poisoned")
    assert sim_client.job("cgc", bad)["polls"] >= 3  # refused after the usual confirmations


def no_request_before_its_stated_time(log: list[dict[str, Any]]) -> int:
    """Checks the simulator's request log; returns how many 429s it holds."""
    throttled = [e for e in log if e["status"] == 429]
    for entry in throttled:
        early = [
            later
            for later in log
            if later["credential"] == entry["credential"]
            and entry["at"] < later["at"] < entry["until"] - 0.01  # ms-rounded records
        ]
        assert early == [], f"asked again before the 429's stated time {entry}: {early[:3]}"
    return len(throttled)


def test_no_request_reaches_an_account_before_its_429s_stated_time(
    fleet: Fleet, sim_client: SimulatorClient
) -> None:
    # SAYMON here states no budget: the 429 and its Retry-After are all the poller learns.
    sim_client.set_limit("saymon", "4/3")
    specs = [{"provider": "saymon", "pending_polls": 1, "running_polls": 4}] * 10
    stand_in(fleet.env)  # tracked before the worker starts
    for export_id in sim_client.create_jobs(specs):
        track_export("saymon", str(export_id), timeout=180, **callback_sigs())
    # One thread asking one request at a time: no request is in flight when a 429 arrives
    # (a wave's other requests would be; README, Known limits).
    fleet.env["POLLER_TRAIN_PARALLEL"] = "1"
    fleet.worker(concurrency=1)
    fleet.beat()

    states = {c["record"]["state"] for c in fleet.wait_for_callbacks(10, timeout=150)}
    assert states == {"completed"}
    assert no_request_before_its_stated_time(sim_client.requests("saymon")) >= 1


def test_a_stated_budget_is_used_without_429s_and_without_a_rate_limit_setting(
    fleet: Fleet, sim_client: SimulatorClient
) -> None:
    sim_client.set_limit("biodatacatalyst", "30/10")
    specs = [{"provider": "biodatacatalyst", "pending_polls": 1, "running_polls": 100_000}] * 60
    stand_in(fleet.env)  # tracked before the worker starts
    for export_id in sim_client.create_jobs(specs):
        track_export("biodatacatalyst", str(export_id), timeout=600)
    fleet.worker(concurrency=4)
    fleet.beat()

    def span() -> float:
        log = sim_client.requests("biodatacatalyst")
        return log[-1]["at"] - log[0]["at"] if log else 0.0

    wait_for(lambda: span() >= 42, 120, "42 s of polling")  # four windows and some
    log = sim_client.requests("biodatacatalyst")
    start = log[0]["at"]
    window = [e for e in log if e["at"] < start + 40]  # four whole windows: 120 allowed
    throttled = sum(e["status"] == 429 for e in window)
    answered = sum(e["status"] == 200 for e in window)
    assert throttled <= 0.05 * len(window), f"{throttled} of {len(window)} answered 429"
    assert answered >= 0.7 * 120, f"{answered} of 120 allowed requests used"
    assert answered <= 120  # the simulator's own limit: a check on the counting above
    assert no_request_before_its_stated_time(log) == throttled
