"""Backoff efficiency, measured on the real policy code: requests per export vs detection lag.

    .venv/bin/python bench/backoff_sim.py [--jobs 2000] [--seed 7] [--json] [--plot PATH]

Replays jobs whose durations spread log-uniformly from 30 s to 2 h through
`export_poller.policy.decide`
(the function the workers call), with no Redis, HTTP or clock: each job is polled when it is
tracked (its start), then whenever the policy says; the lag is the first poll at or after the
provider finished minus that finish. Reports requests per export and the 50th/95th-percentile
lag for the default policy, fixed 10/30/60 s polling and other backoff settings (the frontier),
then the progress-aware policy on ChaosSearch-like jobs (partitions finishing at an uneven
rate) against the cheapest plain backoff with the same or better 95th-percentile lag.
`--plot PATH` draws those same rows (SVG or PNG; needs the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export_poller import policy
from export_poller.providers.models import ExportStatus, Progress

FOREVER = 10**9
Waiter = Callable[[int, float, ExportStatus], float]


@dataclass(frozen=True)
class Job:
    duration: float
    partitions: tuple[float, ...]  # completion time of each partition, ascending; last = end

    def status(self, t: float) -> ExportStatus:
        done = sum(1 for at in self.partitions if at <= t)
        return ExportStatus(
            state="running", progress=Progress(completed=done, total=len(self.partitions))
        )


def make_jobs(count: int, rng: random.Random) -> list[Job]:
    jobs = []
    for _ in range(count):
        duration = math.exp(rng.uniform(math.log(30), math.log(7200)))
        weights = [rng.expovariate(1.0) for _ in range(rng.randint(10, 50))]
        total, acc, times = sum(weights), 0.0, []
        for w in weights:
            acc += w
            times.append(duration * acc / total)
        jobs.append(Job(duration, tuple(times)))
    return jobs


def run(job: Job, wait: Waiter) -> tuple[int, float]:
    """Requests made and detection lag for one job under one policy."""
    t, attempt = 0.0, 0
    while True:
        attempt += 1
        if t >= job.duration:
            return attempt, t - job.duration
        t += wait(attempt, t, job.status(t))


def via_decide(backoff: policy.Backoff, rng: random.Random, progress: bool) -> Waiter:
    """The real policy: `decide` on a running answer (with or without its progress)."""

    def wait(attempt: int, t: float, status: ExportStatus) -> float:
        answer = status if progress else ExportStatus(state="running")
        ctx = policy.PollContext(
            attempts=attempt, deadline=FOREVER, started_at=0.0, state="running"
        )
        decision = policy.decide(ctx, answer, t, backoff, rand=rng.random)
        assert decision.next_poll_at is not None
        return decision.next_poll_at - t

    return wait


def fixed(seconds: float) -> Waiter:
    return lambda attempt, t, status: seconds


def measure(jobs: list[Job], wait: Waiter) -> dict[str, float]:
    results = [run(job, wait) for job in jobs]
    lags = sorted(lag for _, lag in results)
    return {
        "requests": statistics.fmean(n for n, _ in results),
        "p50_lag": lags[len(lags) // 2],
        "p95_lag": lags[int(len(lags) * 0.95)],
    }


def frontier(jobs: list[Job], seed: int) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    default = policy.Backoff()
    rows["default backoff 10s x2 max 240s"] = measure(
        jobs, via_decide(default, random.Random(seed), progress=False)
    )
    for seconds in (10, 30, 60):
        rows[f"fixed {seconds}s"] = measure(jobs, fixed(seconds))
    for initial, maximum in ((5, 60), (5, 120), (5, 180), (5, 300), (30, 240), (5, 600)):
        backoff = policy.Backoff(initial=initial, maximum=maximum)
        rows[f"backoff {initial}s x2 max {maximum}s"] = measure(
            jobs, via_decide(backoff, random.Random(seed), progress=False)
        )
    return rows


def progress_vs_plain(jobs: list[Job], seed: int) -> dict[str, Any]:
    aware = measure(jobs, via_decide(policy.Backoff(), random.Random(seed), progress=True))
    best: tuple[str, dict[str, float]] | None = None
    for maximum in (2, 3, 5, 8, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300):
        backoff = policy.Backoff(initial=min(10, maximum), maximum=maximum)
        plain = measure(jobs, via_decide(backoff, random.Random(seed), progress=False))
        if plain["p95_lag"] <= aware["p95_lag"] and (
            best is None or plain["requests"] < best[1]["requests"]
        ):
            best = (f"backoff max {maximum}s", plain)
    assert best is not None, "no plain backoff matched the progress-aware lag"
    ratio = best[1]["requests"] / aware["requests"]
    return {
        "progress_aware": aware,
        "plain": {"name": best[0], **best[1]},
        "ratio": ratio,
        "pass": ratio >= 2.0,
    }


def show(name: str, row: dict[str, float]) -> None:
    print(f"  {name:<34} {row['requests']:>8.1f} {row['p50_lag']:>9.1f}s {row['p95_lag']:>9.1f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="draw the frontier into this SVG/PNG file")
    args = parser.parse_args()
    jobs = make_jobs(args.jobs, random.Random(args.seed))
    print(f"{args.jobs} jobs, durations log-uniform 30 s .. 2 h (seed {args.seed})")
    print(f"  {'policy':<34} {'req/export':>8} {'p50 lag':>10} {'p95 lag':>10}")
    rows = frontier(jobs, args.seed)
    for name, row in rows.items():
        show(name, row)
    result = progress_vs_plain(jobs, args.seed)
    print("\nChaosSearch-like jobs (partitions done/total, uneven rate):")
    show("progress-aware (default backoff)", result["progress_aware"])
    show(f"cheapest plain, same p95: {result['plain']['name']}", result["plain"])
    print(
        f"  requests ratio {result['ratio']:.1f}x (goal >= 2.0x) -> "
        f"{'PASS' if result['pass'] else 'FAIL'}"
    )
    if args.json:
        print(json.dumps({"frontier": rows, "progress": result}))
    if args.plot:
        from bench import plots

        print(f"plot: {plots.backoff_frontier(rows, result, args.plot)}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
