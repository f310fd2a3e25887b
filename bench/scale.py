"""Scale: Redis bytes per tracked export, sweep cost against due work, worker memory.

    .venv/bin/python bench/scale.py [--only redis|sweep|rss] [--million] [--json]

Goals (issue: fleet scale):
  1. Redis spends at most 1 KB per tracked export; 1,000,000 tracked on one Redis (--million).
     Tracking 100,000 exports leaves a worker's RSS within 20 MB of what it is with 1,000.
  2. One sweep with 100,000 tracked and 100 due takes no more than twice one with 1,000
     tracked and 100 due.

Every part starts its own private redis-server; the RSS part also runs the simulator, a worker
and beat, with the tracked exports' next polls spread over the next ten minutes (the steady
state of a large fleet: most exports parked, a stream of them due).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from export_poller.config.settings import AccountSettings, Settings  # noqa: E402
from export_poller.engine import Engine  # noqa: E402
from export_poller.processes import (  # noqa: E402  # noqa: E402
    Child,
    exit_on_sigterm,
    start_beat,
    start_redis,
    start_worker,
    wait_until,
)
from export_poller.providers.models import ExportStatus, Progress  # noqa: E402
from export_poller.store import Claim, Store  # noqa: E402

PROVIDERS = ("chaossearch", "saymon", "biodatacatalyst", "cometly", "cgc")
SIG = {"task": "myapp.export_ready", "options": {"queue": "myapp"}}
MESSAGE = "Export is being processed. Please check back in a few minutes."


@contextlib.contextmanager
def private_redis() -> Iterator[redis.Redis]:
    child = start_redis(Path(tempfile.mkdtemp(prefix="export-poller-bench-")))
    try:
        yield redis.Redis.from_url(child.extra["url"])
    finally:
        child.stop()


def settings() -> Settings:
    accounts = {
        name: AccountSettings(
            provider=name,
            base_url="http://127.0.0.1:9",
            token="t",
            username="u",
            password="p",
            access_key="a",
            secret_key="s",
            region="us-east-1",
        )
        for name in PROVIDERS
    }
    # The backlog bound is off here: these parts measure the store and the sweep, not admission.
    return Settings(_env_file=None, accounts=accounts, backlog_max=10**9)  # type: ignore[call-arg]


def engine_for(r: redis.Redis) -> Engine:
    return Engine(settings(), Store(r, "ep"), lambda *a: None, lambda *a: None)


def track_many(
    engine: Engine,
    count: int,
    start: int = 0,
    threads: int = 4,
    providers: tuple[str, ...] = PROVIDERS,
) -> list[str]:
    """Track `count` exports round-robin over the providers, from several threads."""
    out: list[list[str]] = [[] for _ in range(threads)]

    def work(slot: int) -> None:
        for i in range(start + slot, start + count, threads):
            provider = providers[i % len(providers)]
            export_id = str(i) if provider == "cometly" else f"exp{i:029d}"
            fields = {
                "provider": provider,
                "account": provider,
                "export_id": export_id,
                "metadata": {"report": "daily"},
                "on_complete": SIG,
                "on_failure": SIG,
            }
            out[slot].append(engine.track(fields, 6 * 3600))

    pool = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return [tid for part in out for tid in part]


def make_running(engine: Engine, tids: list[str]) -> None:
    """One poll's worth of state: progress, message, attempts, a fresh token. Settled in
    trains of one account's exports, as a worker settles them, so the follow-ups leave as a
    worker's do: one message per train (each message handed to the broker is counted in the
    backlog ledger until a worker starts it; one per export would count 50,000 messages)."""
    status = ExportStatus(
        state="running", progress=Progress(completed=3, total=20), message=MESSAGE
    )
    by_account: dict[str, list[Claim]] = {}
    for tid in tids:
        rec = engine.store.get(tid) or {}
        claim = engine.store.claim(
            tid,
            rec.get("token", ""),
            "bench",
            account=rec.get("account", ""),
            now=time.time(),
            lease_until=time.time() + 60,
        )
        if isinstance(claim, str):
            continue
        train = by_account.setdefault(claim.fields["account"], [])
        train.append(claim)
        if len(train) == engine.settings.train_max:
            engine.settler.settle(train, dict.fromkeys([c.tracking_id for c in train], status))
            train.clear()
    for train in by_account.values():
        if train:
            engine.settler.settle(train, dict.fromkeys([c.tracking_id for c in train], status))


def bytes_per_export(
    r: redis.Redis, count: int, running: int, providers: tuple[str, ...] = PROVIDERS
) -> dict[str, Any]:
    r.flushall()
    engine = engine_for(r)
    base = int(r.info("memory")["used_memory"])
    started = time.monotonic()
    tids = track_many(engine, count, providers=providers)
    took = time.monotonic() - started
    make_running(engine, tids[:running])
    used = int(r.info("memory")["used_memory"]) - base
    return {
        "tracked": count,
        "bytes_per_export": round(used / count),
        "track_seconds": round(took, 1),
        "tracks_per_second": round(count / took),
        "running_sampled": running,
        "providers": list(providers),
    }


def part_redis(million: bool) -> dict[str, Any]:
    results = []
    with private_redis() as r:
        for count in (1_000, 100_000) + ((1_000_000,) if million else ()):
            result = bytes_per_export(r, count, running=count if count <= 100_000 else 0)
            print(
                f"  {count:>9,} tracked: {result['bytes_per_export']} B/export "
                f"({result['tracks_per_second']:,} tracks/s)",
                flush=True,
            )
            results.append(result)
        # Issue 14: one provider whose every running record carries its documented message.
        result = bytes_per_export(r, 50_000, running=50_000, providers=("cometly",))
        print(
            f"  {50_000:>9,} tracked, all Cometly, each with the documented "
            f"{len(MESSAGE)}-character message: {result['bytes_per_export']} B/export",
            flush=True,
        )
        results.append(result)
    # At 1,000 the fixed costs (metrics hash, script cache, table sizing) are not amortized;
    # the goal is about a fleet, so it is judged from 100,000 up.
    worst = max(r["bytes_per_export"] for r in results if r["tracked"] >= 50_000)
    return {"runs": results, "goal_bytes": 1024, "pass": worst <= 1024}


def sweep_seconds(r: redis.Redis, tracked: int, due: int, repeats: int = 30) -> float:
    """Median time of one sweep with `tracked` exports parked and `due` of them due now."""
    r.flushall()
    engine = engine_for(r)
    tids = track_many(engine, tracked)
    far = time.time() + 3600
    r.zadd(engine.store.sched, dict.fromkeys(tids, far))
    for account in PROVIDERS:  # parked: due in an hour in its account's index too
        key = engine.store.due_key(account)
        r.zadd(key, dict.fromkeys(r.zrange(key, 0, -1), far))  # type: ignore[arg-type]
    keys = {
        tid: engine.store.due_key((engine.store.get(tid) or {})["account"]) for tid in tids[:due]
    }
    timings = []
    for _ in range(repeats):
        r.zadd(engine.store.sched, dict.fromkeys(tids[:due], time.time() - 1))
        for tid, key in keys.items():
            r.zadd(key, {tid: time.time() - 1})
        started = time.perf_counter()
        report = engine.sweep()
        timings.append(time.perf_counter() - started)
        assert report.enqueued == due, report
    return statistics.median(timings)


def part_sweep() -> dict[str, Any]:
    with private_redis() as r:
        small = sweep_seconds(r, 1_000, 100)
        large = sweep_seconds(r, 100_000, 100)
    ratio = large / small
    print(
        f"  sweep, 100 due: {small * 1000:.2f} ms with 1,000 tracked, "
        f"{large * 1000:.2f} ms with 100,000 tracked: ratio {ratio:.2f} (goal <= 2)"
    )
    return {"ms_1k": small * 1000, "ms_100k": large * 1000, "ratio": ratio, "pass": ratio <= 2}


def rss_kb(pid: int) -> tuple[int, int]:
    """RSS of the worker's main process, and of it with its children (the prefork pool)."""
    sizes = []
    for proc in [pid, *children(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{proc}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]))
    return (sizes[0] if sizes else 0), sum(sizes)


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
    return found


def worker_rss(tracked: int, seconds: float) -> dict[str, Any]:
    from export_poller.demo import simulator_accounts_env
    from export_poller.providers.simulator.client import SimulatorClient
    from export_poller.providers.simulator.server import start_in_thread

    workdir = Path(tempfile.mkdtemp(prefix="export-poller-rss-"))
    with contextlib.ExitStack() as stack:
        redis_child = start_redis(workdir)
        stack.callback(redis_child.stop)
        sim = start_in_thread(port=0, cometly_limit="0", sbg_limit="0")
        stack.callback(sim.stop)
        url = redis_child.extra["url"]
        r = redis.Redis.from_url(url)
        client = SimulatorClient(sim.url)
        ids = []
        for offset in range(0, tracked, 5000):
            chunk = min(5000, tracked - offset)
            ids += client.create_jobs([{"provider": "saymon", "running_polls": 10**6}] * chunk)
        env = {
            **os.environ,
            **simulator_accounts_env(sim.url),
            "POLLER_REDIS_URL": url,
            "POLLER_KEY_PREFIX": "ep",
            "POLLER_BACKOFF_MAX": "600",
        }
        parked = park(r, url, sim.url, [str(i) for i in ids], env)
        env |= {k: v for k, v in os.environ.items() if k.startswith("BENCH_POLLER_")}
        env |= {k[6:]: v for k, v in env.items() if k.startswith("BENCH_POLLER_")}
        pool = os.environ.get("BENCH_POOL", "threads")
        worker = start_worker(env, workdir, concurrency=2, pool=pool)
        stack.callback(worker.stop)
        beat = start_beat(env, workdir)
        stack.callback(beat.stop)
        return sample(worker, r, seconds, parked)


def park(r: redis.Redis, url: str, sim_url: str, ids: list[str], env: dict[str, str]) -> int:
    """Track every export as a fleet in steady state has them: polled before, next poll
    somewhere in the next ten minutes."""
    config = {k: v for k, v in env.items() if k.startswith("POLLER_")}
    with contextlib.ExitStack():
        old = {k: os.environ.get(k) for k in config}
        os.environ.update(config)
        from export_poller.runtime import get_engine, reconfigure

        reconfigure()
        engine = get_engine()
        engine.send_poll = lambda *a: None
        now = time.time()
        for i, export_id in enumerate(ids):
            tid = engine.track(
                {"provider": "saymon", "account": "saymon", "export_id": export_id, "metadata": {}},
                6 * 3600,
            )
            when = now + 600 * (i + 0.5) / len(ids)
            r.hset(f"ep:x:{tid}", mapping={"attempts": 10, "next_poll_at": when})
            r.zadd("ep:sched", {tid: when})
            r.zadd("ep:due:saymon", {tid: when})
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return len(ids)


def sample(worker: Child, r: redis.Redis, seconds: float, parked: int) -> dict[str, Any]:
    wait_until(lambda: "ready" in worker.output(), 60, "the worker")
    started = time.monotonic()
    peak = main_peak = 0
    polls_before = metric_polls(r)
    while time.monotonic() - started < seconds:
        main, total = rss_kb(worker.proc.pid)
        peak, main_peak = max(peak, total), max(main_peak, main)
        time.sleep(2)
    polls = metric_polls(r) - polls_before
    return {
        "tracked": parked,
        "peak_rss_mb": round(peak / 1024, 1),
        "main_process_peak_mb": round(main_peak / 1024, 1),
        "polls_in_window": polls,
        "window_s": seconds,
    }


def metric_polls(r: redis.Redis) -> int:
    fields = r.hgetall("ep:metrics")
    return sum(int(float(v)) for k, v in fields.items() if k.startswith(b"polls|"))


def part_rss(seconds: float) -> dict[str, Any]:
    runs = [worker_rss(count, seconds) for count in (1_000, 100_000)]
    for run in runs:
        print(
            f"  worker RSS with {run['tracked']:,} tracked: {run['peak_rss_mb']} MB in all, "
            f"main process {run['main_process_peak_mb']} MB "
            f"({run['polls_in_window']} polls in {seconds:.0f}s)",
            flush=True,
        )
    small, large = runs
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    print(f"  growth {growth:.1f} MB (goal <= 20 MB)")
    return {"small": small, "large": large, "growth_mb": growth, "pass": growth <= 20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("redis", "sweep", "rss"))
    parser.add_argument("--million", action="store_true", help="also track 1,000,000")
    parser.add_argument("--rss-seconds", type=float, default=90)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, {redis_version()}"
    )
    results: dict[str, Any] = {}
    if args.only in (None, "redis"):
        print("Redis memory per tracked export (goal <= 1024 B):", flush=True)
        results["redis"] = part_redis(args.million)
    if args.only in (None, "sweep"):
        print("Sweep cost follows due work (goal: ratio <= 2):", flush=True)
        results["sweep"] = part_sweep()
    if args.only in (None, "rss"):
        print("Worker memory, 1,000 vs 100,000 tracked (goal: growth <= 20 MB):", flush=True)
        results["rss"] = part_rss(args.rss_seconds)
    ok = all(part["pass"] for part in results.values())
    print("PASS" if ok else "FAIL")
    if args.json:
        print(json.dumps(results))
    return 0 if ok else 1


def redis_version() -> str:
    import subprocess

    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split()[2] if out else "redis ?"


if __name__ == "__main__":
    sys.exit(main())
