"""Pacing against a provider's per-account limit, with no RATE_LIMIT configured.

    .venv/bin/python bench/pacing.py [--seconds 60] [--only stated|silent] [--json]

Two providers with the same limit, 30 requests per 10 s per credential (the simulator counts
fixed windows, as Seven Bridges and Cometly do):
  stated  BioData Catalyst: every answer carries X-RateLimit-Limit/Remaining/Reset
  silent  SAYMON given the same limit: it answers 429 + Retry-After and says nothing else
Two workers (4 threads each) and beat poll 100 exports lasting 10-90 s, far more demand than
the budget. Printed, from the simulator's own request log over the first `--seconds`:
  429 share   requests answered 429 / all requests
  budget use  requests answered 200 / (30 x the windows in the span)
  p95 lag     per export, the provider's finish -> the first answer saying so (all exports)
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

from bench.fleet_goals import sim_of, stack, use_env  # noqa: E402
from export_poller.processes import (  # noqa: E402
    exit_on_sigterm,
    start_beat,
    start_worker,
    wait_until,
)

LIMIT, WINDOW = 30, 10.0
PROVIDERS = {"stated": "biodatacatalyst", "silent": "saymon"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)] if ordered else 0.0


def scenario(kind: str, seconds: float, exports: int = 100) -> dict[str, Any]:
    provider = PROVIDERS[kind]
    with stack([], f"pace-{kind}") as (env, workdir, children):
        sim = sim_of(env)
        sim.set_limit(provider, f"{LIMIT}/{WINDOW:g}")
        for n in range(2):
            children.append(start_worker(env, workdir, name=f"w{n}", concurrency=4))
        children.append(start_beat(env, workdir))
        for child in children[:2]:
            wait_until(lambda child=child: "ready" in child.output(), 60, "a worker")
        rng = random.Random(7)
        specs = [{"provider": provider, "duration_s": rng.uniform(10, 90)} for _ in range(exports)]
        ids = [str(i) for i in sim.create_jobs(specs)]
        use_env(env)
        from export_poller.api import track_export

        for job_id in ids:
            track_export(provider, job_id, timeout=3600)
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started > seconds, seconds + 5, "the span", 1.0)
        jobs = {job_id: sim.job(provider, job_id) for job_id in ids}
        while any(job["reported_at"] is None for job in jobs.values()):
            time.sleep(2.0)
            jobs = {job_id: sim.job(provider, job_id) for job_id in ids}
        log = sim.requests(provider)
    start = log[0]["at"]
    span = [e for e in log if e["at"] < start + seconds]
    throttled = sum(e["status"] == 429 for e in span)
    answered = sum(e["status"] == 200 for e in span)
    allowed = LIMIT * math.ceil(seconds / WINDOW)
    lags = [job["reported_at"] - job["finished_at"] for job in jobs.values()]
    return {
        "provider": provider,
        "exports": exports,
        "requests": len(span),
        "http_429": throttled,
        "share_429": throttled / max(1, len(span)),
        "allowed": allowed,
        "budget_use": answered / allowed,
        "p50_lag_s": percentile(lags, 0.5),
        "p95_lag_s": percentile(lags, 0.95),
        "all_requests": len(log),
        "all_429": sum(e["status"] == 429 for e in log),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--only", choices=tuple(PROVIDERS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )
    results = {}
    for kind in PROVIDERS:
        if args.only in (None, kind):
            out = results[kind] = scenario(kind, args.seconds)
            print(
                f"{kind:>6} ({out['provider']}, {LIMIT}/{WINDOW:g}s, no RATE_LIMIT): "
                f"{out['requests']} requests in {args.seconds:.0f}s, "
                f"429 share {out['share_429']:.1%} ({out['http_429']}), "
                f"budget use {out['budget_use']:.0%} of {out['allowed']}, "
                f"lag p50 {out['p50_lag_s']:.1f}s p95 {out['p95_lag_s']:.1f}s",
                flush=True,
            )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
