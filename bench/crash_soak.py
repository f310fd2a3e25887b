"""Crash soak: 1,000 exports, four workers and two beats, while processes and Redis die.

Prints: exports tracked, ended, lost (goal 0), callbacks fired twice (goal 0), wrong final
states (goal 0), callbacks delayed past one sweep interval plus the rescue grace after their
export ended (goal 0 on RabbitMQ), messages left parked in kombu's Redis `unacked` set, and the
time to finish against a run without faults. Run from the repo root:

    .venv/bin/python bench/crash_soak.py [--exports 1000] [--broker redis|rabbitmq] [--json]

`--broker rabbitmq` uses a private vhost on the machine's RabbitMQ (`SOAK_AMQP_URL`, default
amqp://guest:guest@127.0.0.1:5672; made with rabbitmqctl, deleted afterwards); Redis is the store
either way and is the one restarted.

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
from export_poller.processes import (
    DEFAULT_AMQP_URL,
    Child,
    exit_on_sigterm,
    rabbitmq_vhost,
    start_beat,
    start_redis,
    start_worker,
)
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
        if step == 2:
            beat = fleet.beats.pop(0)
            beat.kill(signal.SIGKILL)
            fleet.add_beat()
            yield f"t={time.monotonic() - started:5.1f}s SIGKILL {beat.name}, started another"
        if step == 3:  # early, so a fast run (RabbitMQ) sees every kind of fault too
            port = int(redis_child[0].extra["url"].rsplit(":", 1)[1].split("/")[0])
            redis_child[0].stop()
            redis_child[0] = start_redis(workdir, appendonly=True, port=port)
            yield f"t={time.monotonic() - started:5.1f}s restarted Redis (AOF)"


def run(count: int, faults: bool, seed: int, broker: str) -> dict[str, Any]:
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
            # A message held by a worker that dies comes back after this long (Redis): the
            # horizon (10 s) plus the lease, plus room, as the settings require.
            "POLLER_VISIBILITY_TIMEOUT": os.environ.get("SOAK_VISIBILITY_TIMEOUT", "40"),
        }
        if broker == "rabbitmq":
            amqp = os.environ.get("SOAK_AMQP_URL", DEFAULT_AMQP_URL)
            env["POLLER_BROKER_URL"] = stack.enter_context(rabbitmq_vhost(amqp))
        os.environ.update(env)
        from export_poller.processes import stand_in
        from export_poller.runtime import reconfigure

        reconfigure()
        stand_in(env)  # tracking may start before the first worker is ready
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
    faults_seen: list[str] = []
    first_seen: dict[str, float] = {}  # wall-clock time each export's callback was first seen
    # Nothing new for this long after the faults stopped: what is missing is lost, not late.
    patience = CHAOS_SECONDS + float(fleet.env["POLLER_VISIBILITY_TIMEOUT"]) + 30
    progress = time.monotonic()
    while time.monotonic() - started < 600 and time.monotonic() - progress < patience:
        seen = callbacks(r)
        if len(seen) > len(first_seen):
            progress = time.monotonic()
        first_seen |= {tid: time.time() for tid in seen if tid not in first_seen}
        if len(seen) >= len(expected):
            break
        chaos_on = time.monotonic() - started < CHAOS_SECONDS
        if faults and chaos_on and time.monotonic() >= next_fault:
            faults_seen.append(next(events, ""))
            print(faults_seen[-1], flush=True)
            next_fault = time.monotonic() + rng.uniform(4, 7)
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    held = parked(r)
    settle(r, fleet.env)
    report = summarize(r, expected, callbacks(r), elapsed)
    kinds = collections.Counter(fault_kind(f) for f in faults_seen if f)
    return report | lateness(r, first_seen, fleet.env) | held | {"faults": dict(kinds)}


def fault_kind(event: str) -> str:
    for words, kind in (
        ("SIGKILL beat", "beat_killed"),
        ("SIGKILL worker", "worker_killed"),
        ("restarted Redis", "redis_restarted"),
        ("had exited", "worker_exited"),
    ):
        if words in event:
            return kind
    return "other"


def parked(r: redis.Redis) -> dict[str, Any]:
    """Messages in kombu's Redis `unacked` hash when every callback has run, by task: held by
    a worker that died, they come back after the visibility timeout."""
    tasks = collections.Counter(
        json.loads(raw)[0]["headers"]["task"]
        for raw in retrying(lambda: r.hvals("unacked"))  # type: ignore[no-any-return]
    )
    return {"parked_unacked": sum(tasks.values()), "parked_by_task": dict(tasks)}


def settle(r: redis.Redis, env: dict[str, str]) -> None:
    """Wait for what is parked to come back (Redis: the visibility timeout), so a callback run
    twice by a redelivery is counted too."""
    if env.get("POLLER_BROKER_URL", "").startswith("amqp"):
        return
    deadline = time.monotonic() + float(env["POLLER_VISIBILITY_TIMEOUT"]) + 15
    while retrying(lambda: r.hlen("unacked")) and time.monotonic() < deadline:
        time.sleep(1)


def lateness(r: redis.Redis, first_seen: dict[str, float], env: dict[str, str]) -> dict[str, Any]:
    """How long after its export ended each callback ran (to the bench's 0.5 s look), against
    the promise: one sweep interval plus the rescue grace."""
    allowed = float(env["POLLER_SWEEP_INTERVAL"]) + float(env["POLLER_RESCUE_GRACE"])
    late = []
    for tid, seen_at in first_seen.items():
        ended = retrying(lambda tid=tid: r.hget(f"{PREFIX}:x:{tid}", "finished_at"))
        if ended:
            late.append(seen_at - float(ended))
    late.sort()
    return {
        "delayed": sum(1 for s in late if s > allowed + 0.5),
        "delay_allowed_s": allowed,
        "delay_p50_s": round(late[len(late) // 2], 1) if late else None,
        "delay_max_s": round(late[-1], 1) if late else None,
    }


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
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, broker {args.broker}",
        flush=True,
    )
    calm = run(args.exports, faults=False, seed=args.seed, broker=args.broker)
    print(f"without faults: {calm}", flush=True)
    chaotic = run(args.exports, faults=True, seed=args.seed, broker=args.broker)
    print(f"with faults:    {chaotic}", flush=True)
    ok = all(chaotic[k] == 0 for k in ("lost", "double_callbacks", "wrong_state"))
    ratio = chaotic["seconds"] / calm["seconds"]
    print(
        f"\nexports tracked {chaotic['tracked']}, ended {chaotic['ended']}, "
        f"lost {chaotic['lost']} (goal 0), callbacks fired twice {chaotic['double_callbacks']} "
        f"(goal 0), wrong final state {chaotic['wrong_state']} (goal 0), callbacks later than "
        f"{chaotic['delay_allowed_s']:g}s after the end {chaotic['delayed']} "
        f"(max {chaotic['delay_max_s']}s), callbacks run again by a redelivery "
        f"{chaotic['redelivered_executions']}, parked in unacked at the end "
        f"{chaotic['parked_by_task']}"
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
