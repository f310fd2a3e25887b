"""Fleet goals against the simulator: throughput, the shared rate limit, CGC batching.

    .venv/bin/python bench/fleet_goals.py [--only throughput|ratelimit|batching] [--json]

Goals (issue: fleet scale):
  3. Polls per second of two worker processes >= 60% of a bare `requests.Session` loop of two
     processes against the same simulator, measured side by side.
  4. Four workers, a 30/minute account limit: no request over the limit, no 429, >= 90% of
     the allowed budget used while work is waiting.
  5. 1,000 CGC exports due together go out in at most 12 bulk requests; each still gets its
     own record, state and callback.
Each part starts a private redis-server and the simulator in a process of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402

from export_poller.demo import fast_env  # noqa: E402
from export_poller.processes import (  # noqa: E402
    Child,
    exit_on_sigterm,
    free_port,
    spawn,
    start_beat,
    start_redis,
    start_worker,
    wait_until,
)
from export_poller.providers.simulator.client import SimulatorClient  # noqa: E402


@contextlib.contextmanager
def stack(sim_args: list[str], prefix: str) -> Iterator[tuple[dict[str, str], Path, Any]]:
    """A private Redis, the simulator in its own process, and the environment pointing at both."""
    workdir = Path(tempfile.mkdtemp(prefix=f"export-poller-{prefix}-"))
    with contextlib.ExitStack() as stack:
        redis_child = start_redis(workdir)
        stack.callback(redis_child.stop)
        port = free_port()
        sim = spawn(
            "simulator",
            [
                sys.executable,
                "-m",
                "export_poller.providers.simulator",
                "--port",
                str(port),
                *sim_args,
            ],
            os.environ,
            workdir,
        )
        stack.callback(sim.stop)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(url), 20, "the simulator")
        env = {**os.environ, **fast_env(redis_child.extra["url"], url, prefix=prefix)}
        children: list[Child] = []
        stack.callback(lambda: [c.stop() for c in children])
        yield env, workdir, children


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/_sim/health", timeout=1).ok
    except requests.RequestException:
        return False


def use_env(env: dict[str, str]) -> None:
    """This process tracks with `env`'s settings. Benches may track before their workers are
    ready (to load the store first), so the accounts are put on the roster the way those
    workers will put them: track_export refuses an account no live worker serves."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("POLLER_")})
    from export_poller.processes import stand_in
    from export_poller.runtime import reconfigure

    reconfigure()
    stand_in(env)


def sim_of(env: dict[str, str]) -> SimulatorClient:
    return SimulatorClient(env["POLLER_ACCOUNTS__SAYMON__BASE_URL"])


def track_jobs(
    env: dict[str, str], provider: str, specs: list[dict[str, Any]], callbacks: bool = False
) -> list[str]:
    from celery import signature

    from export_poller.api import track_export

    use_env(env)
    ids = sim_of(env).create_jobs([{"provider": provider, **spec} for spec in specs])
    sig = signature("exports.record_callback", args=("done",)) if callbacks else None
    return [track_export(provider, str(i), timeout=3600, on_complete=sig) for i in ids]


# -- 3. throughput ---------------------------------------------------------------------------


def bare_loop(url: str, seconds: float, out: Any, trust_env: bool) -> None:
    session = requests.Session()
    session.auth = ("sim", "sim-password")
    session.trust_env = trust_env
    count, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        session.get(url, timeout=5)
        count += 1
    out.put(count)


def bare_rate(url: str, seconds: float, trust_env: bool = True) -> float:
    """Two processes asking as fast as one `requests.Session` each can. By default a session
    reads proxy settings from the environment on every request; the adapters read them once
    (trust_env=False), so the bench reports the bare loop both ways."""
    queue: Any = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=bare_loop, args=(url, seconds, queue, trust_env))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    total = sum(queue.get(timeout=seconds + 30) for _ in procs)
    for proc in procs:
        proc.join()
    return total / seconds


def polls_rate(
    env: dict[str, str], children: list[Child], workdir: Path, pool: str, seconds: float
) -> float:
    sim = sim_of(env)
    fast = {
        **env,
        "POLLER_BACKOFF_INITIAL": "0.01",
        "POLLER_BACKOFF_MAX": "0.01",
        "POLLER_BACKOFF_FLOOR": "0",
        "POLLER_RESCUE_GRACE": "30",
    }
    concurrency = 8 if pool == "threads" else 1
    for n in range(2):
        children.append(
            start_worker(fast, workdir, name=f"{pool}{n}", pool=pool, concurrency=concurrency)
        )
    for child in children[-2:]:
        wait_until(lambda child=child: "ready" in child.output(), 60, "a worker")
    time.sleep(5)  # warm-up: connections and pools filled
    before = sim.stats()["providers"]["saymon"]["requests"]
    time.sleep(seconds)
    rate = (sim.stats()["providers"]["saymon"]["requests"] - before) / seconds
    for child in children[-2:]:
        child.stop()
    return rate


def part_throughput(seconds: float = 20) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with stack(["--cometly-limit", "0", "--sbg-limit", "0"], "tp") as (env, workdir, children):
        track_jobs(env, "saymon", [{"running_polls": 10**6}] * 200)
        url = env["POLLER_ACCOUNTS__SAYMON__BASE_URL"] + "/node/api/bulk/"
        job = str(sim_of(env).create_job("saymon", running_polls=10**9))
        out["bare_rps"] = bare_rate(f"{url}{job}/status", seconds)
        out["bare_no_env_rps"] = bare_rate(f"{url}{job}/status", seconds, trust_env=False)
        for pool in ("threads", "prefork"):
            out[f"{pool}_polls_per_s"] = polls_rate(env, children, workdir, pool, seconds)
    for pool in ("threads", "prefork"):
        out[f"ratio_{pool}"] = out[f"{pool}_polls_per_s"] / out["bare_rps"]
        out[f"ratio_no_env_{pool}"] = out[f"{pool}_polls_per_s"] / out["bare_no_env_rps"]
    out["pass"] = max(out["ratio_threads"], out["ratio_prefork"]) >= 0.6
    print(f"  bare requests.Session, 2 processes: {out['bare_rps']:.0f} req/s")
    print(f"  the same with trust_env=False (as the adapters): {out['bare_no_env_rps']:.0f} req/s")
    for pool in ("threads", "prefork"):
        print(
            f"  2 workers ({pool}): {out[f'{pool}_polls_per_s']:.0f} polls/s = "
            f"{out[f'ratio_{pool}']:.0%} of bare (goal >= 60%), "
            f"{out[f'ratio_no_env_{pool}']:.0%} of bare with trust_env=False"
        )
    return out


# -- 4. the shared rate limit ----------------------------------------------------------------


def part_ratelimit(seconds: float = 150) -> dict[str, Any]:
    with stack([], "rl") as (env, workdir, children):
        env = {**env, "POLLER_ACCOUNTS__COMETLY__RATE_LIMIT": "30/minute"}
        for n in range(4):
            children.append(start_worker(env, workdir, name=f"w{n}", concurrency=4))
        children.append(start_beat(env, workdir))
        for child in children[:4]:
            wait_until(lambda child=child: "ready" in child.output(), 60, "a worker")
        started = time.monotonic()
        track_jobs(env, "cometly", [{"running_polls": 10**6}] * 100)
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        stats = sim_of(env).stats()["providers"]["cometly"]
    windows = -(-seconds // 60)  # 60 s windows begun during the run
    allowed = 30 * windows
    out = {
        "requests": stats["requests"],
        "allowed": allowed,
        "used": stats["requests"] / allowed,
        "http_429": stats["rate_limited"],
        "max_in_window": stats["max_in_window"],
    }
    out["pass"] = out["http_429"] == 0 and (out["max_in_window"] or 0) <= 30 and out["used"] >= 0.9
    print(
        f"  {seconds:.0f}s, 4 workers, 100 exports waiting: {out['requests']} requests of "
        f"{allowed} allowed ({out['used']:.0%}, goal >= 90%), 429s {out['http_429']} (goal 0), "
        f"busiest window {out['max_in_window']} (goal <= 30)"
    )
    return out


# -- 5. CGC batching -------------------------------------------------------------------------


def part_batching(count: int = 1000) -> dict[str, Any]:
    with stack(["--sbg-limit", "0"], "batch") as (env, workdir, children):
        env = {
            **env,
            "POLLER_BACKOFF_INITIAL": "10",
            "POLLER_BACKOFF_FLOOR": "5",
            "POLLER_BACKOFF_MAX": "10",
        }
        tids = track_jobs(
            env, "cgc", [{"pending_polls": 1, "running_polls": 1}] * count, callbacks=True
        )
        r = redis.Redis.from_url(env["POLLER_REDIS_URL"])
        for n in range(2):
            children.append(start_worker(env, workdir, name=f"w{n}"))
        children.append(start_beat(env, workdir))
        wait_until(lambda: polled_once(r, tids), 120, "every export to be polled once")
        first_round = sim_of(env).stats()["providers"]["cgc"]["requests"]
        wait_until(lambda: r.llen(f"{prefix(env)}:callbacks") >= count, 180, "every callback")
        entries = [json.loads(x) for x in r.lrange(f"{prefix(env)}:callbacks", 0, -1)]
    distinct = len({e["record"]["tracking_id"] for e in entries})
    out = {
        "exports": count,
        "first_round_requests": first_round,
        "callbacks": distinct,
        "pass": first_round <= 12 and distinct == count,
    }
    print(
        f"  {count} CGC exports due together: {first_round} bulk requests (goal <= 12); "
        f"{distinct} distinct callbacks (goal {count})"
    )
    return out


def prefix(env: dict[str, str]) -> str:
    return env["POLLER_KEY_PREFIX"]


def polled_once(r: redis.Redis, tids: list[str]) -> bool:
    with r.pipeline(transaction=False) as pipe:
        for tid in tids:
            pipe.hget(f"batch:x:{tid}", "attempts")
        return all(int(a or 0) >= 1 for a in pipe.execute())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("throughput", "ratelimit", "batching"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )
    parts = {"throughput": part_throughput, "ratelimit": part_ratelimit, "batching": part_batching}
    results = {}
    for name, run in parts.items():
        if args.only in (None, name):
            print(f"{name}:", flush=True)
            results[name] = run()
    ok = all(r["pass"] for r in results.values())
    print("PASS" if ok else "FAIL")
    if args.json:
        print(json.dumps(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
