"""Cost per poll at internet latency: a worker beside a bare `requests` loop, same server.

    .venv/bin/python bench/latency.py [--delays 100,200,500] [--concurrency 200]
        [--seconds 30] [--exports 3000] [--profile DIR] [--json] [--plot PATH]

The simulator (one process for the whole run) answers every Cometly status request after the
injected delay (a global `slow` fault at rate 1). For each delay, in turn:
  bare    one process, `--concurrency` threads sharing one `requests.Session` (pooled, no
          proxy lookup per request, as the adapters use it) asking one job's status in a loop:
          the goal's yardstick
  bare_default  the same with a default `requests.Session()` per thread (as the issue's
          figures were taken; it reads the proxy environment on every request)
  worker  one `celery worker --pool threads` and beat, polling `--exports` Cometly exports
          that never finish, re-polled every second (demand > supply); `--concurrency` requests
          in flight at most: concurrency / `--parallel` threads, each sending up to
          POLLER_TRAIN_PARALLEL (`--parallel`) requests of its train together
Each side gets a warm-up, then a `--seconds` window: polls/s is the simulator's count of
Cometly requests in the window; CPU per 1,000 polls is the process's utime + stime
(/proc/PID/stat) over the window. The simulator runs with more waitress threads than the
concurrency (every in-flight request holds one while it sleeps), and its own CPU and thread
count are printed beside, to show it is not what limits either side.
Goal (issue 14), at 200 ms and 200-way concurrency: worker CPU per 1,000 polls <= 1.5x the
bare loop's, worker polls/s >= 80% of the loop's.
`--profile DIR` records the worker with py-spy during the window (its CPU figure then includes
the sampling cost) and writes DIR/worker-<delay>ms.txt (collapsed stacks).
`--plot PATH` draws the table's rows: CPU per 1,000 polls and polls/s against the delay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.fleet_goals import sim_of, stack, use_env  # noqa: E402
from export_poller.processes import (  # noqa: E402
    exit_on_sigterm,
    start_beat,
    start_worker,
    wait_until,
)

TICKS = os.sysconf("SC_CLK_TCK")
WARMUP = 8.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process: the kernel's share shows thread hand-offs and syscalls."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


# -- the bare loop (a child process of its own, so its CPU is its own) -----------------------


def bare_main(url: str, token: str, threads: int, seconds: float, style: str) -> None:
    """`pooled`: one session, a pool as large as the threads, no proxy lookup per request (as
    the adapters use requests). `default`: a `requests.Session()` per thread, as it comes."""
    shared = requests.Session()
    shared.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))
    shared.trust_env = False
    headers = {"Authorization": f"Bearer {token}"}
    counts = [0] * threads
    end = time.monotonic() + seconds

    def loop(slot: int) -> None:
        session = shared if style == "pooled" else requests.Session()
        while time.monotonic() < end:
            response = session.get(url, headers=headers, timeout=10)
            response.json()
            counts[slot] += 1

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    print(sum(counts), flush=True)


def run_bare(
    env: dict[str, str], job: str, threads: int, seconds: float, style: str
) -> dict[str, Any]:
    url = f"{env['POLLER_ACCOUNTS__COMETLY__BASE_URL']}/public-api/v1/events/exports/{job}"
    argv = [sys.executable, __file__, "--bare", url, str(threads), str(WARMUP + seconds + 3)]
    proc = subprocess.Popen([*argv, style], stdout=subprocess.PIPE, env=env)
    time.sleep(WARMUP)
    window = measure(env, proc.pid, seconds)
    proc.communicate(timeout=60)
    return window


def measure(env: dict[str, str], pid: int, seconds: float) -> dict[str, Any]:
    """polls/s (simulator's count) and CPU of `pid` and of the simulator over one window."""
    sim, spid = sim_of(env), int(env["BENCH_SIM_PID"])
    before = (sim.stats()["providers"]["cometly"]["requests"], cpu_seconds(pid), cpu_seconds(spid))
    kernel_before = cpu_split(pid)[1]
    started = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - started
    after = (sim.stats()["providers"]["cometly"]["requests"], cpu_seconds(pid), cpu_seconds(spid))
    kernel = cpu_split(pid)[1] - kernel_before
    polls = after[0] - before[0]
    return {
        "polls_per_s": polls / took,
        "cpu_per_1000": 1000 * (after[1] - before[1]) / max(polls, 1),
        "kernel_share": kernel / max(after[1] - before[1], 1e-9),
        "cpu_share": (after[1] - before[1]) / took,
        "sim_cpu_share": (after[2] - before[2]) / took,
        "sim_threads": threads_of(spid),
    }


# -- the worker ------------------------------------------------------------------------------


def worker_env(env: dict[str, str], delay_ms: int, parallel: int) -> dict[str, str]:
    return {
        **env,
        "POLLER_KEY_PREFIX": f"lat{delay_ms}",
        "POLLER_QUEUE": f"lat{delay_ms}",
        "POLLER_BACKOFF_INITIAL": "1",
        "POLLER_BACKOFF_MAX": "1",
        "POLLER_BACKOFF_FLOOR": "1",
        "POLLER_RESCUE_GRACE": "30",
        "POLLER_LEASE_SECONDS": "60",
        "POLLER_TRAIN_PARALLEL": str(parallel),
    }


def run_worker(
    env: dict[str, str], workdir: Path, args: argparse.Namespace, delay_ms: int
) -> dict[str, Any]:
    from export_poller.api import track_export

    wenv = worker_env(env, delay_ms, args.parallel)
    threads = -(-args.concurrency // args.parallel)  # at most `concurrency` requests in flight
    use_env(wenv)
    ids = sim_of(env).create_jobs([{"provider": "cometly", "running_polls": 10**9}] * args.exports)
    for export_id in ids:
        track_export("cometly", str(export_id), timeout=3600)
    children = [
        start_worker(wenv, workdir, name=f"lat{delay_ms}", concurrency=threads),
        start_beat(wenv, workdir, name=f"beat{delay_ms}"),
    ]
    try:
        wait_until(lambda: "ready" in children[0].output(), 60, "the worker")
        time.sleep(WARMUP)
        spy = start_profile(args.profile, children[0].proc.pid, delay_ms, args.seconds)
        window = measure(env, children[0].proc.pid, args.seconds)
        if spy is not None:
            spy.wait(timeout=60)
    finally:
        for child in children:
            child.stop()
        if os.environ.get("BENCH_KEEP_LOG"):
            Path(os.environ["BENCH_KEEP_LOG"]).write_text(children[0].output())
    return window


def start_profile(
    directory: Path | None, pid: int, delay_ms: int, seconds: float
) -> subprocess.Popen[bytes] | None:
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    out = directory / f"worker-{delay_ms}ms.txt"
    argv = [str(spy), "record", "--format", "raw", "-o", str(out), "-p", str(pid)]
    argv += ["--duration", str(int(seconds)), "--nonblocking", "--gil"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- the run ---------------------------------------------------------------------------------


def one_delay(
    env: dict[str, str], workdir: Path, args: argparse.Namespace, delay_ms: int
) -> dict[str, Any]:
    sim = sim_of(env)
    sim.set_faults(1.0, ["slow"], providers=["cometly"], delay_s=delay_ms / 1000)
    job = str(sim.create_job("cometly", running_polls=10**9))
    worker = run_worker(env, workdir, args, delay_ms)
    if args.worker_only:  # for trying changes quickly; the ratios need the loops
        print_side(delay_ms, "worker", worker)
        return {"delay_ms": delay_ms, "worker": worker}
    bare = run_bare(env, job, args.concurrency, args.seconds, "pooled")
    default = run_bare(env, job, args.concurrency, args.seconds, "default")
    row = {
        "delay_ms": delay_ms,
        "concurrency": args.concurrency,
        "bare": bare,
        "bare_default": default,
        "worker": worker,
        "cpu_ratio": worker["cpu_per_1000"] / bare["cpu_per_1000"],
        "rate_ratio": worker["polls_per_s"] / bare["polls_per_s"],
    }
    print_row(row)
    return row


def print_side(delay_ms: int, side: str, r: dict[str, Any]) -> None:
    print(
        f"  {delay_ms:>4} ms  {side:<12} {r['polls_per_s']:7.0f} polls/s  "
        f"{r['cpu_per_1000']:5.2f} s CPU/1,000 polls, {r['kernel_share']:.0%} in the kernel  "
        f"(process {r['cpu_share']:.0%} of a core; simulator {r['sim_cpu_share']:.0%}, "
        f"{r['sim_threads']} threads)",
        flush=True,
    )


def print_row(row: dict[str, Any]) -> None:
    for side in ("bare", "bare_default", "worker"):
        print_side(row["delay_ms"], side, row[side])
    d = row["bare_default"]
    print(
        f"  {row['delay_ms']:>4} ms  worker/bare: CPU per poll {row['cpu_ratio']:.2f}x, "
        f"polls/s {row['rate_ratio']:.0%}; against bare_default: "
        f"{row['worker']['cpu_per_1000'] / d['cpu_per_1000']:.2f}x, "
        f"{row['worker']['polls_per_s'] / d['polls_per_s']:.0%}",
        flush=True,
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        bare_main(sys.argv[2], "sim-token", int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", default="100,200,500", help="ms, comma-separated")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--exports", type=int, default=3000)
    parser.add_argument(
        "--parallel",
        type=int,
        default=8,
        help="POLLER_TRAIN_PARALLEL; the worker runs concurrency/parallel threads",
    )
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--worker-only", action="store_true", help="skip the two loops")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="draw the rows into this SVG/PNG file")
    args = parser.parse_args()
    exit_on_sigterm()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )
    sim_threads = args.concurrency + 56
    sim_args = ["--cometly-limit", "0", "--sbg-limit", "0", "--threads", str(sim_threads)]
    rows = []
    with stack(sim_args, "lat") as (env, workdir, _children):
        env["BENCH_SIM_PID"] = str(find_simulator(env))
        for delay_ms in (int(d) for d in args.delays.split(",")):
            rows.append(one_delay(env, workdir, args, delay_ms))
    if args.worker_only:
        return 0
    print_table(rows)
    goal = [r for r in rows if r["delay_ms"] == 200 and r["concurrency"] == 200]
    ok = all(r["cpu_ratio"] <= 1.5 and r["rate_ratio"] >= 0.8 for r in goal)
    if goal:
        print("PASS" if ok else "FAIL")
    if args.json:
        print(json.dumps({"rows": rows, "pass": ok}))
    if args.plot:
        from bench import plots

        print(f"plot: {plots.latency_cost(rows, args.plot)}")
    return 0 if ok else 1


def find_simulator(env: dict[str, str]) -> int:
    """The simulator's pid, from the port it listens on (the stack started it)."""
    port = env["POLLER_ACCOUNTS__COMETLY__BASE_URL"].rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if b"export_poller.providers.simulator" in cmd and port.encode() in cmd:
                return int(entry.name)
    raise RuntimeError("simulator process not found")


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "| delay | in flight | polls/s: bare / default / worker | worker/bare | "
        "CPU per 1,000 polls: bare / default / worker | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        b, d, w = r["bare"], r["bare_default"], r["worker"]
        print(
            f"| {r['delay_ms']} ms | {r['concurrency']} | {b['polls_per_s']:.0f} / "
            f"{d['polls_per_s']:.0f} / {w['polls_per_s']:.0f} | {r['rate_ratio']:.0%} | "
            f"{b['cpu_per_1000']:.2f} / {d['cpu_per_1000']:.2f} / {w['cpu_per_1000']:.2f} s | "
            f"{r['cpu_ratio']:.2f}x |"
        )


if __name__ == "__main__":
    sys.exit(main())
