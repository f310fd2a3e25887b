"""`export-poller demo`: the whole product on one machine, in well under two minutes.

Starts what is missing (a private Redis, the provider simulator, one worker and beat), tracks
exports at all five providers with mixed outcomes, shows a live table and each callback as it
fires, and exits 0 once every export has ended in the state it should. Everything it started is
stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from export_poller.config.brokers import redact_url
from export_poller.policy import ACTIVE_STATES
from export_poller.processes import (
    Child,
    exit_on_sigterm,
    redis_ping,
    start_beat,
    start_redis,
    start_worker,
    wait_until,
)

SIM_CREDENTIALS = {
    "token": "sim-token",
    "username": "sim",
    "password": "sim-password",
    "access_key": "SIMACCESSKEY",
    "secret_key": "sim-secret-key",
    "region": "us-east-1",
}
_CREDENTIAL_FIELDS = {
    "chaossearch": ("access_key", "secret_key", "region"),
    "saymon": ("username", "password"),
    "biodatacatalyst": ("token",),
    "cometly": ("token",),
    "cgc": ("token",),
}
DEADLINE_S = 110.0


def simulator_accounts_env(sim_url: str) -> dict[str, str]:
    """One account per provider, named after it, pointing at the simulator."""
    env: dict[str, str] = {}
    for provider, names in _CREDENTIAL_FIELDS.items():
        prefix = f"POLLER_ACCOUNTS__{provider.upper()}__"
        env[prefix + "PROVIDER"] = provider
        env[prefix + "BASE_URL"] = sim_url
        for name in names:
            env[prefix + name.upper()] = SIM_CREDENTIALS[name]
    return env


def fast_env(redis_url: str, sim_url: str, prefix: str = "demo") -> dict[str, str]:
    """Settings that make a minutes-long production cadence fit in seconds."""
    return {
        "POLLER_REDIS_URL": redis_url,
        "POLLER_KEY_PREFIX": prefix,
        "POLLER_BACKOFF_INITIAL": "0.5",
        "POLLER_BACKOFF_FACTOR": "2",
        "POLLER_BACKOFF_MAX": "3",
        "POLLER_BACKOFF_FLOOR": "0.2",
        "POLLER_SWEEP_INTERVAL": "1",
        "POLLER_RESCUE_GRACE": "6",
        "POLLER_LEASE_SECONDS": "45",
        "POLLER_HTTP_READ_TIMEOUT": "5",
        "POLLER_HEARTBEAT_INTERVAL": "1",
        **simulator_accounts_env(sim_url),
    }


@dataclass(frozen=True)
class Case:
    provider: str
    expect: str
    job: dict[str, Any] = field(default_factory=dict)
    timeout: float = 90.0
    create: bool = True
    note: str = ""


def _ok(running: int, **job: Any) -> dict[str, Any]:
    return {"outcome": "completed", "pending_polls": 1, "running_polls": running, **job}


def _bad(running: int, **job: Any) -> dict[str, Any]:
    return {"outcome": "failed", "pending_polls": 1, "running_polls": running, **job}


CASES: tuple[Case, ...] = (
    Case("chaossearch", "completed", _ok(4, partitions=8)),
    Case("chaossearch", "completed", _ok(6, partitions=20)),
    Case("chaossearch", "failed", _bad(3, partitions=10)),
    Case(
        "chaossearch", "completed", _ok(3, faults=[{"kind": "503", "polls": [2, 3]}]), note="flaky"
    ),
    Case("chaossearch", "completed", _ok(2, faults=[{"kind": "slow", "polls": [2], "delay_s": 1}])),
    Case("saymon", "completed", _ok(2)),
    Case("saymon", "completed", _ok(5)),
    Case("saymon", "completed", _ok(2, faults=[{"kind": "401", "polls": [1]}]), note="flaky auth"),
    Case("saymon", "completed", _ok(3, faults=[{"kind": "garbage", "polls": [2]}]), note="garbage"),
    Case("biodatacatalyst", "completed", _ok(3)),
    Case("biodatacatalyst", "failed", _bad(2)),
    Case("biodatacatalyst", "completed", _ok(2, faults=[{"kind": "503", "polls": [1, 2]}])),
    Case(
        "biodatacatalyst",
        "completed",
        _ok(2, faults=[{"kind": "429", "polls": [2], "retry_after": 2}]),
        note="rate-limited",
    ),
    Case("biodatacatalyst", "timed_out", {"outcome": "completed", "duration_s": 3600}, timeout=12),
    Case("cometly", "completed", _ok(2)),
    Case("cometly", "failed", _bad(2)),
    Case(
        "cometly",
        "completed",
        _ok(2, faults=[{"kind": "429", "polls": [1, 2], "retry_after": 3}]),
        note="rate-limited",
    ),
    Case("cometly", "completed", {"outcome": "completed", "pending_polls": 3, "running_polls": 1}),
    Case("cometly", "completed", _ok(3, faults=[{"kind": "500", "polls": [2]}]), note="flaky"),
    Case("cometly", "cancelled", _ok(50), note="cancelled by the demo"),
    Case("cgc", "completed", _ok(2)),
    Case("cgc", "completed", _ok(4)),
    Case("cgc", "failed", _bad(3)),
    Case("cgc", "completed", _ok(1, faults=[{"kind": "503", "polls": [1]}])),
    Case("cgc", "failed", create=False, note="unknown id: 404 confirmed"),
)


@dataclass
class Tracked:
    case: Case
    tracking_id: str
    callbacks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Private:
    """Names no fleet uses: the demo's key prefix, queue and worker name on whatever Redis."""

    token: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def prefix(self) -> str:
        return f"demo-{self.token}"

    @property
    def queue(self) -> str:
        return f"export-poller-demo-{self.token}"

    @property
    def worker(self) -> str:
        return f"demo-{self.token}"


def _choose_redis(workdir: Path, stack: contextlib.ExitStack, redis_url: str | None) -> str:
    """A private redis-server unless told to use one; the environment's is never taken."""
    if redis_url:
        if not redis_ping(redis_url):
            raise RuntimeError(f"no Redis answers at {redact_url(redis_url)}")
        return redis_url
    child = start_redis(workdir)
    stack.callback(child.stop)
    return child.extra["url"]


def private_env(redis_url: str, sim_url: str, names: Private) -> dict[str, str]:
    """This process's environment without any POLLER_* setting of a fleet, plus the demo's."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("POLLER_")}
    env |= fast_env(redis_url, sim_url, prefix=names.prefix)
    return env | {"POLLER_BROKER_URL": redis_url, "POLLER_QUEUE": names.queue}


def _start_services(
    stack: contextlib.ExitStack, workdir: Path, redis_url: str | None
) -> tuple[str, list[Child]]:
    from export_poller.providers.simulator.server import start_in_thread

    sim = start_in_thread(port=0)
    stack.callback(sim.stop)
    url = _choose_redis(workdir, stack, redis_url)
    names = Private()
    if redis_url:  # a shared Redis: take back what the demo wrote, after its children stop
        stack.callback(cleanup, url, names)
    env = private_env(url, sim.url, names)
    os.environ.clear()
    os.environ.update(env)
    children = [start_worker(env, workdir, name=names.worker), start_beat(env, workdir)]
    for child in children:
        stack.callback(child.stop)
    print(f"simulator {sim.url}  redis {redact_url(url)}  queue {names.queue}  logs {workdir}")
    return sim.url, children


_DEADLINES = "_kombu.binding_deadlines"


def cleanup(redis_url: str, names: Private) -> int:
    """Delete what the demo wrote to a shared Redis: its keys, its queue and its worker's
    remote-control binding. Returns how many keys went."""
    import redis

    r = redis.Redis.from_url(redis_url)
    doomed = [
        *r.scan_iter(match=f"{names.prefix}:*", count=1000),
        *r.scan_iter(match=f"{names.queue}*", count=1000),
        *r.scan_iter(match=f"*{names.worker}*", count=1000),
        f"_kombu.binding.{names.queue}",
    ]
    for key in r.scan_iter(match="_kombu.binding.*", count=1000):
        for member in r.smembers(key):  # type: ignore[union-attr]
            if names.worker.encode() in member:
                r.srem(key, member)
    gone = int(cast(int, r.delete(*doomed))) if doomed else 0
    # kombu keeps a deadline per expiring binding table; one whose table is gone is dead (on a
    # Redis that is no fleet's broker, the demo's worker was its only user).
    for table in r.zrange(_DEADLINES, 0, -1):  # type: ignore[union-attr]
        if not r.exists(b"_kombu.binding." + table):
            r.zrem(_DEADLINES, table)
    return gone


def _track_all(sim_url: str, count: int) -> list[Tracked]:
    from celery import signature

    from export_poller.api import track_export
    from export_poller.providers.simulator.client import SimulatorClient

    client = SimulatorClient(sim_url)
    tracked = []
    for i in range(count):
        case = CASES[i % len(CASES)]
        export_id = (
            str(client.create_job(provider=case.provider, **case.job))
            if case.create
            else f"unknownExport{i:019d}"
        )
        tid = track_export(
            case.provider,
            export_id,
            timeout=case.timeout,
            metadata={"demo": i, "note": case.note},
            on_complete=signature("exports.record_callback", args=("on_complete",)),
            on_failure=signature("exports.record_callback", args=("on_failure",)),
        )
        tracked.append(Tracked(case, tid))
    return tracked


def _drain_callbacks(tracked: dict[str, Tracked]) -> None:
    from export_poller.runtime import redis_client

    key = f"{os.environ['POLLER_KEY_PREFIX']}:callbacks"
    while (raw := redis_client().lpop(key)) is not None:
        entry = json.loads(raw)  # type: ignore[arg-type]
        record = entry["record"]
        item = tracked.get(record["tracking_id"])
        if item is not None:
            item.callbacks.append(entry["label"])
        status = record.get("status") or {}
        result = status.get("error") or record.get("error") or status.get("result") or {}
        print(
            f"callback {entry['label']:<11} {record['provider']:<15} {record['state']:<9} "
            f"attempts={record['attempts']:<2} {json.dumps(result, sort_keys=True)[:90]}"
        )


def _snapshot(tracked: list[Tracked]) -> list[dict[str, Any]]:
    from export_poller.api import get_export

    return [r for t in tracked if (r := get_export(t.tracking_id)) is not None]


def _finished(tracked: list[Tracked], records: list[dict[str, Any]]) -> bool:
    ended = all(r["state"] not in ACTIVE_STATES for r in records)
    needed = sum(1 for t in tracked if t.case.expect != "cancelled")
    return ended and sum(len(t.callbacks) for t in tracked) >= needed


def _watch(tracked: list[Tracked], children: list[Child]) -> None:
    from export_poller.api import cancel_export
    from export_poller.table import render

    by_id = {t.tracking_id: t for t in tracked}
    started = shown = time.monotonic()
    for t in tracked:
        if t.case.expect == "cancelled":
            cancel_export(t.tracking_id)
    while time.monotonic() - started < DEADLINE_S:
        _drain_callbacks(by_id)
        records = _snapshot(tracked)
        if _finished(tracked, records):
            print(render(records))
            return
        if not all(c.alive() for c in children):
            raise RuntimeError("a worker or beat process died; see its log")
        if time.monotonic() - shown >= 3:
            shown = time.monotonic()
            print(render(records) + "\n")
        time.sleep(0.25)
    raise TimeoutError(f"exports still active after {DEADLINE_S:.0f}s")


def _verdict(tracked: list[Tracked]) -> dict[str, Any]:
    records = {r["tracking_id"]: r for r in _snapshot(tracked)}
    wrong = [t for t in tracked if records[t.tracking_id]["state"] != t.case.expect]
    doubled = [t for t in tracked if len(t.callbacks) > 1]
    counts: dict[str, int] = {}
    for record in records.values():
        counts[record["state"]] = counts.get(record["state"], 0) + 1
    print(
        f"\n{len(tracked)} exports ended: {json.dumps(counts, sort_keys=True)}; "
        f"callbacks fired: {sum(len(t.callbacks) for t in tracked)}"
    )
    for t in wrong:
        print(
            f"UNEXPECTED {t.case.provider} {t.tracking_id}: "
            f"{records[t.tracking_id]['state']} (expected {t.case.expect})"
        )
    for t in doubled:
        print(f"DOUBLE CALLBACK {t.tracking_id}: {t.callbacks}")
    return {
        "ok": not wrong and not doubled,
        "exports": len(tracked),
        "states": counts,
        "callbacks": sum(len(t.callbacks) for t in tracked),
        "unexpected": [t.tracking_id for t in wrong],
        "double_callbacks": [t.tracking_id for t in doubled],
    }


def run_demo(
    count: int = len(CASES), *, redis_url: str | None = None, as_json: bool = False
) -> int:
    """Run the demo; with `as_json` the progress goes to stderr and stdout gets one JSON
    summary. It runs in a fresh temporary directory, so no `.env` of the caller applies."""
    exit_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="export-poller-demo-"))
    summary: dict[str, Any] = {"ok": False}
    with contextlib.ExitStack() as stack:
        if as_json:
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        summary = _run(stack, workdir, count, redis_url)
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    if summary["ok"]:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if summary["ok"] else int(summary.get("exit", 1))


def _run(
    stack: contextlib.ExitStack, workdir: Path, count: int, redis_url: str | None
) -> dict[str, Any]:
    try:
        os.chdir(workdir)
        sim_url, children = _start_services(stack, workdir, redis_url)
        from export_poller.runtime import reconfigure

        reconfigure()
        wait_until(lambda: "ready" in children[0].output(), 60, "the worker to start")
        tracked = _track_all(sim_url, count)
        print(f"tracking {len(tracked)} exports at 5 providers\n")
        _watch(tracked, children)
        return _verdict(tracked)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything the demo started", file=sys.stderr)
        return {"ok": False, "exit": 130, "error": "interrupted"}
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo failed: {exc} (logs in {workdir})", file=sys.stderr)
        return {"ok": False, "exit": 1, "error": str(exc), "logs": str(workdir)}
