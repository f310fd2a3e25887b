"""Overload: one big account beside a small one, far more due work than the worker polls.

    .venv/bin/python bench/overload.py [--seconds 600] [--big 3000] [--small 10] [--json]
        [--backoff-max 3] [--sim-threads 8] [--plot PATH]

`--backoff-max 1 --sim-threads 512` is the fairness goal's setup: a backoff ceiling of 1 s and a
provider that serves any number of requests at once, so what the small account waits for is
the fleet, not the provider's own queue.

The issue's setup: one worker (16 threads), every answer taking 200 ms (the simulator's `slow`
fault on every request), backoff 1 s x2 up to 3 s. Account `big` tracks `--big` Cometly exports
that run for hours, account `small` tracks `--small`; every `--new-every` seconds one more
export of `small` is tracked. Sampled four times a second from Redis (a gap shorter than that
would be read as one), and printed:

  lag          per account: when a poll ran (the record's `updated_at`) minus when it was
               planned (the `next_poll_at` the poll before set), p50/p95, over every poll of
               `small` and of 100 sampled exports of `big`
  gap          per account: time between two polls of one export, median
  first poll   a newly tracked export of `small`: tracking -> its first poll, each
  broker       the poll queue's length (a Redis list, LLEN) and kombu's unacked messages
               (HLEN unacked: prefetched and countdown messages a worker holds), p50/p95/max

`--plot PATH` draws the lag samples behind the printed percentiles, per account, and the
broker's two counts over the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.fleet_goals import sim_of, stack, use_env  # noqa: E402
from export_poller.processes import (  # noqa: E402
    exit_on_sigterm,
    start_beat,
    start_worker,
    wait_until,
)

ACCOUNTS = ("big", "small")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)] if ordered else 0.0


def account_env(sim_url: str, backoff_max: float) -> dict[str, str]:
    env = {
        "POLLER_BACKOFF_INITIAL": str(min(1.0, backoff_max)),
        "POLLER_BACKOFF_MAX": str(backoff_max),
        "POLLER_BACKOFF_FLOOR": "0.5",
    }
    for name in ACCOUNTS:
        prefix = f"POLLER_ACCOUNTS__{name.upper()}__"
        env |= {prefix + "PROVIDER": "cometly", prefix + "BASE_URL": sim_url}
        env[prefix + "TOKEN"] = "sim-token"
    return env


class Sampler:
    """Every poll of the watched exports, seen as a change of the record's `updated_at`."""

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.r, self.prefix = r, prefix
        self.watched: dict[str, str] = {}  # tid -> account
        self.tracked_at: dict[str, float] = {}
        self.last: dict[str, tuple[float, float]] = {}  # tid -> (updated_at, next_poll_at)
        self.lags: dict[str, list[float]] = {name: [] for name in ACCOUNTS}
        self.gaps: dict[str, list[float]] = {name: [] for name in ACCOUNTS}
        self.first: list[float] = []
        self.queue: list[int] = []
        self.unacked: list[int] = []

    def watch(self, tid: str, account: str, tracked_at: float | None = None) -> None:
        self.watched[tid] = account
        if tracked_at is not None:
            self.tracked_at[tid] = tracked_at

    def sample(self, queue: str) -> None:
        tids = list(self.watched)
        with self.r.pipeline(transaction=False) as pipe:
            for tid in tids:
                pipe.hmget(f"{self.prefix}:x:{tid}", "updated_at", "next_poll_at", "created_at")
            pipe.llen(queue)
            pipe.hlen("unacked")
            *rows, qlen, unacked = pipe.execute()
        self.queue.append(int(qlen))
        self.unacked.append(int(unacked))
        for tid, (updated, next_at, created) in zip(tids, rows, strict=True):
            if not updated or not next_at:
                continue
            seen = (float(updated), float(next_at))
            if tid in self.tracked_at:
                if seen[0] > float(created):  # its first poll
                    self.first.append(seen[0] - float(created))
                    del self.tracked_at[tid]
                self.last[tid] = seen
                continue
            before = self.last.get(tid)
            self.last[tid] = seen
            if before is None or seen[0] == before[0]:
                continue
            account = self.watched[tid]
            self.lags[account].append(max(0.0, seen[0] - before[1]))
            self.gaps[account].append(seen[0] - before[0])


def run(
    seconds: float, big: int, small: int, new_every: float, backoff_max: float, sim_threads: int
) -> tuple[dict[str, Any], Sampler]:
    with stack(["--threads", str(sim_threads)], "overload") as (env, workdir, children):
        env |= account_env(env["POLLER_ACCOUNTS__COMETLY__BASE_URL"], backoff_max)
        sim = sim_of(env)
        sim.set_limit("cometly", "0")  # Cometly's own 30/minute would hold everything
        sim.set_faults(1.0, ["slow"], providers=["cometly"], delay_s=0.2, seed=1)
        children.append(start_worker(env, workdir, name="w0", concurrency=16))
        children.append(start_beat(env, workdir))
        wait_until(lambda: "ready" in children[0].output(), 60, "the worker")
        use_env(env)
        from export_poller.api import track_export
        from export_poller.config.settings import get_settings

        settings = get_settings()
        r = redis.Redis.from_url(settings.redis_url)
        sampler = Sampler(r, settings.key_prefix)
        specs = [{"provider": "cometly", "duration_s": 36000} for _ in range(big + small)]
        ids = [str(i) for i in sim.create_jobs(specs)]
        big_tids = [track_export("cometly", i, account="big", timeout=86400) for i in ids[:big]]
        for job in ids[big:]:
            sampler.watch(track_export("cometly", job, account="small", timeout=86400), "small")
        for tid in random.Random(3).sample(big_tids, min(100, big)):
            sampler.watch(tid, "big")
        started = time.monotonic()
        next_new = started + new_every
        while time.monotonic() - started < seconds:
            if time.monotonic() >= next_new:
                job = str(sim.create_jobs([{"provider": "cometly", "duration_s": 36000}])[0])
                now = time.time()
                sampler.watch(track_export("cometly", job, account="small"), "small", now)
                next_new += new_every
            sampler.sample(settings.queue)
            time.sleep(0.25)
        requests = sim.stats()["providers"]["cometly"]["requests"]
    return summary(sampler, seconds, requests), sampler


def summary(s: Sampler, seconds: float, requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": seconds, "requests": requests}
    for name in ACCOUNTS:
        out[name] = {
            "polls_seen": len(s.lags[name]),
            "lag_p50_s": percentile(s.lags[name], 0.5),
            "lag_p95_s": percentile(s.lags[name], 0.95),
            "gap_p50_s": percentile(s.gaps[name], 0.5),
            "gap_p95_s": percentile(s.gaps[name], 0.95),
        }
    out["first_poll_s"] = [round(x, 1) for x in s.first]
    out["first_poll_missing"] = len(s.tracked_at)
    out["queue_p50"], out["queue_p95"] = percentile(s.queue, 0.5), percentile(s.queue, 0.95)
    out["queue_max"], out["unacked_max"] = max(s.queue, default=0), max(s.unacked, default=0)
    out["unacked_p50"] = percentile(s.unacked, 0.5)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--big", type=int, default=3000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--new-every", type=float, default=60.0)
    parser.add_argument("--backoff-max", type=float, default=3.0)
    parser.add_argument("--sim-threads", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="draw lags and backlog into this SVG/PNG")
    args = parser.parse_args()
    exit_on_sigterm()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )
    out, sampler = run(
        args.seconds, args.big, args.small, args.new_every, args.backoff_max, args.sim_threads
    )
    print(f"{out['seconds']:.0f}s, {out['requests']} provider requests")
    for name in ACCOUNTS:
        row = out[name]
        print(
            f"{name:>6}: lag p50 {row['lag_p50_s']:.1f}s p95 {row['lag_p95_s']:.1f}s, "
            f"gap p50 {row['gap_p50_s']:.1f}s p95 {row['gap_p95_s']:.1f}s "
            f"({row['polls_seen']} polls seen)"
        )
    print(f" first poll of a new small export (s): {out['first_poll_s']}")
    print(
        f"broker queue (LLEN) p50 {out['queue_p50']} p95 {out['queue_p95']} max "
        f"{out['queue_max']}; unacked p50 {out['unacked_p50']} max {out['unacked_max']}",
        flush=True,
    )
    if args.json:
        print(json.dumps(out))
    if args.plot:
        from bench import plots

        drawn = plots.overload_lag(out, sampler.lags, sampler.queue, sampler.unacked, args.plot)
        print(f"plot: {drawn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
