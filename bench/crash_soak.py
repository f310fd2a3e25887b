"""Crash soak: 1,000 exports, four workers and two beats, while processes and Redis die.

Prints: exports tracked, ended, lost (goal 0), callbacks fired twice (goal 0), wrong final
states (goal 0), and the time to finish against a run without faults. Run from the repo root:

    .venv/bin/python bench/crash_soak.py [--exports 1000] [--json]

Faults during the first minute of the chaos run: a random worker is killed with SIGKILL every
4-7 seconds and a new one started (a worker that exited by itself is replaced too, as a
supervisor would); beat is killed and restarted; Redis (append-only file on) is restarted
once; two beats run the whole time. `SOAK_POOL=prefork` runs prefork workers instead of threads.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from export_poller.demo import fast_env
from export_poller.processes import Child, exit_on_sigterm, start_beat, start_redis, start_worker
from export_poller.providers.simulator.client import SimulatorClient
from export_poller.providers.simulator.server import start_in_thread

PROVIDERS = ("chaossearch", "saymon", "biodatacatalyst", "cometly", "cgc")
PREFIX = "soak"
CHAOS_SECONDS = 60.0  # faults keep coming for this long; then the fleet is left to finish


def retrying(call: Callable[[], Any], attempts: int = 50) -> Any:
    """Reads from the bench survive the Redis restart it causes."""
    for _ in range(attempts - 1):
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.2)
    return call()


class Fleet:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.workers: list[Child] = []
        self.beats: list[Child] = []
        self.started = 0

    def add_worker(self) -> None:
        self.started += 1
        name = f"worker{self.started}"
        pool = os.environ.get("SOAK_POOL", "threads")
        self.workers.append(
            start_worker(self.env, self.workdir, name=name, concurrency=4, pool=pool)
        )

    def add_beat(self) -> None:
        self.started += 1
        self.beats.append(start_beat(self.env, self.workdir, name=f"beat{self.started}"))

    def stop(self) -> None:
        for child in self.workers + self.beats:
            child.stop()


def plan(count: int, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "provider": PROVIDERS[i % len(PROVIDERS)],
            "outcome": "failed" if rng.random() < 0.1 else "completed",
            "pending_polls": 1,
            "running_polls": rng.randint(3, 10),
        }
        for i in range(count)
    ]


def track_all(sim_url: str, jobs: list[dict[str, Any]]) -> dict[str, str]:
    from celery import signature

    from export_poller.api import track_export

    ids = SimulatorClient(sim_url).create_jobs(jobs)
    sig = signature("exports.record_callback", args=("soak",))
    expected = {}
    for job, export_id in zip(jobs, ids, strict=True):
        tid = track_export(
            job["provider"], str(export_id), timeout=600, on_complete=sig, on_failure=sig
        )
        # SAYMON has no failed state: a failed bulk operation still reports finished.
        expected[tid] = "completed" if job["provider"] == "saymon" else job["outcome"]
    return expected


def callbacks(r: redis.Redis) -> collections.Counter[str]:
    """Dispatches per export: distinct task ids (a redelivered message keeps its id)."""
    return collections.Counter(tid for tid, _ in entries(r))


def entries(r: redis.Redis) -> set[tuple[str, str]]:
    raw = retrying(lambda: r.lrange(f"{PREFIX}:callbacks", 0, -1))
    return {(e["record"]["tracking_id"], e["task_id"]) for e in map(json.loads, raw)}


def executions(r: redis.Redis) -> int:
    return int(retrying(lambda: r.llen(f"{PREFIX}:callbacks")))


def chaos(
    fleet: Fleet, redis_child: list[Child], workdir: Path, started: float, rng: random.Random
) -> Iterator[str]:
    """One fault per step; yields what it did."""
    step = 0
    while True:
        step += 1
        for dead in [w for w in fleet.workers if not w.alive()]:
            fleet.workers.remove(dead)  # as a supervisor would: replace what exited
            fleet.add_worker()
            yield f"t={time.monotonic() - started:5.1f}s {dead.name} had exited; replaced"
        victim = rng.choice(fleet.workers)
        victim.kill(signal.SIGKILL)
        fleet.workers.remove(victim)
        fleet.add_worker()
        yield f"t={time.monotonic() - started:5.1f}s SIGKILL {victim.name}"
        if step == 3:
            beat = fleet.beats.pop(0)
            beat.kill(signal.SIGKILL)
            fleet.add_beat()
            yield f"t={time.monotonic() - started:5.1f}s SIGKILL {beat.name}, started another"
        if step == 5:
            port = int(redis_child[0].extra["url"].rsplit(":", 1)[1].split("/")[0])
            redis_child[0].stop()
            redis_child[0] = start_redis(workdir, appendonly=True, port=port)
            yield f"t={time.monotonic() - started:5.1f}s restarted Redis (AOF)"


def run(count: int, faults: bool, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="export-poller-soak-"))
    with contextlib.ExitStack() as stack:
        redis_child = [start_redis(workdir, appendonly=True)]
        stack.callback(lambda: redis_child[0].stop())
        sim = start_in_thread(port=0, cometly_limit="0", sbg_limit="0")
        stack.callback(sim.stop)
        env = fast_env(redis_child[0].extra["url"], sim.url, prefix=PREFIX)
        env |= {
            "POLLER_LEASE_SECONDS": "20",
            "POLLER_HTTP_CONNECT_TIMEOUT": "2",
            # Callback messages held by a worker that dies come back after this long.
            "POLLER_VISIBILITY_TIMEOUT": "30",
        }
        os.environ.update(env)
        from export_poller.runtime import reconfigure

        reconfigure()
        fleet = Fleet(workdir, {**os.environ})
        stack.callback(fleet.stop)
        for _ in range(4):
            fleet.add_worker()
        fleet.add_beat()
        fleet.add_beat()
        expected = track_all(sim.url, plan(count, rng))
        started = time.monotonic()
        return watch(fleet, redis_child, workdir, expected, started, faults, rng)


def watch(
    fleet: Fleet,
    redis_child: list[Child],
    workdir: Path,
    expected: dict[str, str],
    started: float,
    faults: bool,
    rng: random.Random,
) -> dict[str, Any]:
    r = redis.Redis.from_url(fleet.env["POLLER_REDIS_URL"])
    events = chaos(fleet, redis_child, workdir, started, rng) if faults else iter(())
    next_fault = started + 4
    while time.monotonic() - started < 600:
        seen = callbacks(r)
        if len(seen) >= len(expected):
            break
        chaos_on = time.monotonic() - started < CHAOS_SECONDS
        if faults and chaos_on and time.monotonic() >= next_fault:
            print(next(events, ""), flush=True)
            next_fault = time.monotonic() + rng.uniform(4, 7)
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    return summarize(r, expected, callbacks(r), elapsed)


def summarize(
    r: redis.Redis, expected: dict[str, str], seen: collections.Counter[str], elapsed: float
) -> dict[str, Any]:
    states = {}
    for tid in expected:
        state = retrying(lambda tid=tid: r.hget(f"{PREFIX}:x:{tid}", "state"))
        states[tid] = state.decode() if state else None
    return {
        "tracked": len(expected),
        "ended": sum(1 for s in states.values() if s not in (None, "pending", "running")),
        "lost": sum(1 for tid in expected if seen[tid] == 0),
        "double_callbacks": sum(1 for n in seen.values() if n > 1),
        "redelivered_executions": executions(r) - sum(seen.values()),
        "wrong_state": sum(1 for tid, want in expected.items() if states[tid] != want),
        "wrong_examples": [
            (tid, expected[tid], states[tid]) for tid in expected if states[tid] != expected[tid]
        ][:5],
        "seconds": round(elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    calm = run(args.exports, faults=False, seed=args.seed)
    print(f"without faults: {calm}", flush=True)
    chaotic = run(args.exports, faults=True, seed=args.seed)
    print(f"with faults:    {chaotic}", flush=True)
    ok = all(chaotic[k] == 0 for k in ("lost", "double_callbacks", "wrong_state"))
    ratio = chaotic["seconds"] / calm["seconds"]
    print(
        f"\nexports tracked {chaotic['tracked']}, ended {chaotic['ended']}, "
        f"lost {chaotic['lost']} (goal 0), callbacks fired twice {chaotic['double_callbacks']} "
        f"(goal 0), wrong final state {chaotic['wrong_state']} (goal 0)"
    )
    print(
        f"time to finish: {chaotic['seconds']}s with faults vs {calm['seconds']}s without "
        f"({ratio:.2f}x) -> {'PASS' if ok else 'FAIL'}"
    )
    if args.json:
        print(json.dumps({"calm": calm, "chaos": chaotic, "ratio": ratio, "pass": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
