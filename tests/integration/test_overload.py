"""Overload, end to end: one account with thousands of exports beside one with ten, a worker
that cannot keep up (every answer takes 200 ms), and the small account still polled close to
its schedule, with the broker's queue bounded. Counted from Redis and the broker's own keys."""

from __future__ import annotations

import statistics
import time

import pytest
import redis

from export_poller.api import track_export
from export_poller.processes import stand_in
from export_poller.providers.simulator.client import SimulatorClient
from tests.integration.conftest import PREFIX, Fleet, wait_for

pytestmark = pytest.mark.integration

BIG, SMALL, CAP = 2000, 10, 16
BACKOFF_MAX = 3.0  # the trial profile's POLLER_BACKOFF_MAX: the small account's ceiling


def two_accounts(fleet: Fleet, monkeypatch: pytest.MonkeyPatch, sim_url: str) -> None:
    # A message counts against the bound until a worker starts it or the rescue grace after
    # its due time has passed: tracking 2,010 exports on a busy machine (tests run side by
    # side) can take longer than the trial profile's 6 s, so the grace is the default 30 s here.
    extra = {"POLLER_BACKLOG_MAX": str(CAP), "POLLER_RESCUE_GRACE": "30"}
    for name in ("big", "small"):
        prefix = f"POLLER_ACCOUNTS__{name.upper()}__"
        extra |= {prefix + "PROVIDER": "cometly", prefix + "BASE_URL": sim_url}
        extra[prefix + "TOKEN"] = "sim-token"
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    fleet.env |= extra
    from export_poller.runtime import reconfigure

    reconfigure()


def polled_at(r: redis.Redis, tid: str) -> float:
    """When the export was last polled (its creation time until its first poll)."""
    return float(r.hget(f"{PREFIX}:x:{tid}", "updated_at") or 0)


def attempts(r: redis.Redis, tids: list[str]) -> int:
    with r.pipeline(transaction=False) as pipe:
        for tid in tids:
            pipe.hget(f"{PREFIX}:x:{tid}", "attempts")
        return sum(int(x or 0) for x in pipe.execute())


def broker_depth(r: redis.Redis) -> int:
    """Poll messages in the broker: the queue (a Redis list) and kombu's unacked messages,
    which hold what a worker prefetched and every countdown message it waits on."""
    return int(r.llen("export-poller")) + int(r.hlen("unacked"))


@pytest.mark.timeout(240)
def test_a_small_account_keeps_its_schedule_beside_a_big_backlog(
    fleet: Fleet, sim_client: SimulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_accounts(fleet, monkeypatch, sim_client.base_url)
    sim_client.set_limit("cometly", "0")  # Cometly's own 30/minute would hold everything
    sim_client.set_faults(1.0, ["slow"], providers=["cometly"], delay_s=0.2, seed=1)
    specs = [{"provider": "cometly", "duration_s": 3600}] * (BIG + SMALL + 1)
    jobs = [str(i) for i in sim_client.create_jobs(specs)]
    stand_in(fleet.env)  # tracked before the workers start
    big = [track_export("cometly", j, account="big", timeout=3600) for j in jobs[:BIG]]
    small = [track_export("cometly", j, account="small", timeout=3600) for j in jobs[BIG:-1]]
    r = fleet.r
    assert broker_depth(r) <= CAP + 2  # tracking 2,010 exports queued a bounded number

    fleet.worker(concurrency=8)
    fleet.beat()
    wait_for(lambda: all(polled_at(r, t) > 0 for t in small), 30, "the small account's polls")
    last = {t: polled_at(r, t) for t in small}
    gaps: list[float] = []
    depths: list[int] = []
    end = time.monotonic() + 30
    while time.monotonic() < end:
        for tid in small:
            now = polled_at(r, tid)
            if now != last[tid]:
                gaps.append(now - last[tid])
                last[tid] = now
        depths.append(broker_depth(r))
        time.sleep(0.2)
    tracked = time.time()
    newcomer = track_export("cometly", jobs[-1], account="small", timeout=3600)
    wait_for(lambda: polled_at(r, newcomer) > tracked, 30, "the new export's first poll")
    first_poll = polled_at(r, newcomer) - tracked

    big_lag = float(r.hget(f"{PREFIX}:metrics", "lag|big") or 0)
    # the big account saturates the worker: far behind its schedule, it takes the most polls
    assert big_lag > 3 * BACKOFF_MAX, big_lag
    assert attempts(r, big) > 5 * attempts(r, small)
    assert len(gaps) >= 2 * SMALL
    assert statistics.median(gaps) <= 3 * BACKOFF_MAX, sorted(gaps)
    assert first_poll <= 10.0
    # the broker held a bounded backlog; before the bound, it held every first poll (2,010)
    assert max(depths) <= 4 * CAP + 20, max(depths)
