"""Issue 22, black-box: every key a Redis script touches arrives in KEYS.

"Every key a script touches arrives in KEYS: no script builds a key name from ARGV or from a
value it read" (what Redis Cluster requires). Written from the issue, the README and the
earlier independent suites only, without reading the service's code: a private redis-server is
watched with MONITOR while a real worker, beat and the bundled simulator run every feature the
README offers, and every command a script ran is checked, key by key, against that call's
KEYS (see ``harness_issue22`` for how). The auditor is checked first, through the same
MONITOR, on a clean and a dirty script of our own, so a failure here is the service's.

Two runs, each on its own Redis: our own fleet (all five providers through their own
accounts, completed, failed, refused 404/401, poisoned CGC bulk ids, 429s, stated budgets, a
breaker, a timeout, an unconfigured account, a cancel, a worker SIGKILLed mid-poll, a
callback that cannot be dispatched, redeliver, refresh, every read command of the CLI), and
``export-poller demo --redis-url``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.independent.harness_issue22 import (
    CELERY,
    EXPORT_POLLER,
    Audit,
    KeyFinder,
    Proc,
    RedisServer,
    audit_lines,
    check_control,
    clean_env,
    http_json,
    monitored_redis,
    run_control_scripts,
    wait_for,
)

pytestmark = pytest.mark.integration

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}
CALLBACKS = "i22:callbacks"  # a list in db 1, written by our own callback tasks

# Fast but documented settings (README, Settings): short backoff and sweeps, a short lease
# and rescue grace so a killed worker's polls come back within the test, two confirmations of
# a refusal, two failed dispatches before the dead-letter set, a breaker that opens quickly.
FAST_SETTINGS = {
    "POLLER_BACKOFF_INITIAL": "1",
    "POLLER_BACKOFF_FACTOR": "1.5",
    "POLLER_BACKOFF_MAX": "2",
    "POLLER_BACKOFF_FLOOR": "0.5",
    "POLLER_SWEEP_INTERVAL": "1",
    "POLLER_RESCUE_GRACE": "3",
    "POLLER_LEASE_SECONDS": "8",
    "POLLER_HTTP_CONNECT_TIMEOUT": "2",
    "POLLER_HTTP_READ_TIMEOUT": "3",
    "POLLER_ENQUEUE_HORIZON": "5",
    "POLLER_VISIBILITY_TIMEOUT": "30",
    "POLLER_CALLBACK_ATTEMPTS": "2",
    "POLLER_CONFIRM_REFUSALS": "2",
    "POLLER_BACKLOG_MAX": "16",
    "POLLER_DEFAULT_TIMEOUT": "120",
    "POLLER_BREAKER_WINDOW": "10",
    "POLLER_BREAKER_MIN_CALLS": "4",
    "POLLER_BREAKER_COOLDOWN": "1",
    "POLLER_BREAKER_MAX_COOLDOWN": "2",
}

# account -> (provider, settings besides BASE_URL); logins from the simulator's banner
ACCOUNTS = {
    "cometly": ("cometly", {"TOKEN": "sim-token"}),
    "cgc": ("cgc", {"TOKEN": "sim-token"}),
    "bdc": ("biodatacatalyst", {"TOKEN": "sim-token"}),
    "saymon": ("saymon", {"USERNAME": "sim", "PASSWORD": "sim-password"}),
    "chaos": (
        "chaossearch",
        {
            "ACCESS_KEY": "SIMACCESSKEY",
            "SECRET_KEY": "sim-secret-key",
            "REGION": "us-east-1",
            "RATE_LIMIT": "120/minute",
        },
    ),
}
# configured where exports are tracked and read, not in the workers: "misconfigured"
GHOST = ("ghost", "cometly", {"TOKEN": "sim-token"})

REFUSALS = list(range(1, 40))


@dataclass
class Job:
    account: str
    spec: dict[str, Any]  # the simulator's job, without the provider
    expect: str
    how: str = "api"  # "api" (track_export), "cli" (export-poller track), "send" (exports.track)
    timeout: float | None = None
    callback: str = "normal"  # "strict": a signature whose arguments do not fit its task
    tracking_id: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def provider(self) -> str:
        return GHOST[1] if self.account == GHOST[0] else ACCOUNTS[self.account][0]


def _jobs() -> dict[str, Job]:
    slow2 = [{"kind": "slow", "polls": [2], "delay_s": 2}]
    return {
        "cometly-ok": Job("cometly", {"running_polls": 1}, "completed", metadata={"r": "d"}),
        "cometly-ok2": Job("cometly", {"running_polls": 2}, "completed"),
        "cometly-fail": Job("cometly", {"outcome": "failed", "running_polls": 1}, "failed"),
        "cometly-429": Job(
            "cometly",
            {"running_polls": 1, "faults": [{"kind": "429", "polls": [1, 2], "retry_after": 1}]},
            "completed",
        ),
        "cometly-flaky": Job(
            "cometly",
            {
                "running_polls": 1,
                "faults": [{"kind": "garbage", "polls": [1]}, {"kind": "503", "polls": [2]}],
            },
            "completed",
        ),
        "cometly-404": Job("cometly", {"faults": [{"kind": "404", "polls": REFUSALS}]}, "failed"),
        "cometly-cancel": Job("cometly", {"running_polls": 100000}, "cancelled"),
        "cometly-kill": Job("cometly", {"running_polls": 3, "faults": slow2}, "completed"),
        "cometly-deadletter": Job("cometly", {"running_polls": 1}, "completed", callback="strict"),
        "cometly-custom": Job(
            "cometly",
            {"running_polls": 1},
            "completed",
            tracking_id=f"i22-custom-{uuid.uuid4().hex[:8]}",
        ),
        "cometly-cli": Job("cometly", {"running_polls": 1}, "completed", how="cli"),
        "cometly-send": Job(
            "cometly",
            {"running_polls": 1},
            "completed",
            how="send",
            tracking_id=f"i22-send-{uuid.uuid4().hex[:8]}",
        ),
        **{f"cgc-{i}": Job("cgc", {"running_polls": 1}, "completed") for i in range(1, 5)},
        "cgc-fail": Job("cgc", {"outcome": "failed", "running_polls": 1}, "failed"),
        "cgc-poison": Job("cgc", {"poison": "400"}, "failed"),
        "bdc-1": Job("bdc", {"running_polls": 1}, "completed"),
        "bdc-2": Job("bdc", {"running_polls": 2}, "completed"),
        "bdc-fail": Job("bdc", {"outcome": "failed", "running_polls": 1}, "failed"),
        "bdc-401": Job("bdc", {"faults": [{"kind": "401", "polls": REFUSALS}]}, "failed"),
        "saymon-1": Job("saymon", {"running_polls": 1}, "completed"),
        "saymon-2": Job("saymon", {"running_polls": 2}, "completed"),
        "saymon-timeout": Job("saymon", {"running_polls": 100000}, "timed_out", timeout=5),
        "chaos-1": Job("chaos", {"running_polls": 2}, "completed"),
        **{
            f"chaos-503-{i}": Job(
                "chaos",
                {"running_polls": 1, "faults": [{"kind": "503", "polls": [1, 2, 3]}]},
                "completed",
            )
            for i in range(1, 4)
        },
        "chaos-fail": Job("chaos", {"outcome": "failed", "running_polls": 1}, "failed"),
        # An export past its deadline. (It was an account configured only on the client's
        # side, timing out unpolled; since the workers publish the accounts they serve, such an
        # account is refused at track time, which track_all checks.)
        "cometly-deadline": Job("cometly", {"running_polls": 100000}, "timed_out", timeout=4),
    }


CALLBACK_MODULE = '''
"""Callbacks of our own: every call is appended to a Redis list as JSON."""
import json
import os
import time

import redis
from celery import shared_task

_R = redis.Redis.from_url(os.environ["I22_CALLBACK_REDIS"])


def _note(kind, task, record):
    record = record if isinstance(record, dict) else {"raw": repr(record)}
    _R.rpush("i22:callbacks", json.dumps({
        "kind": kind,
        "tracking_id": record.get("tracking_id"),
        "state": record.get("state"),
        "redeliveries": record.get("redeliveries"),
        "task_id": task.request.id,
        "t": time.time(),
    }, default=str))


@shared_task(bind=True, name="i22.on_complete")
def on_complete(self, record, *args, **kwargs):
    _note("on_complete", self, record)


@shared_task(bind=True, name="i22.on_failure")
def on_failure(self, record, *args, **kwargs):
    _note("on_failure", self, record)


@shared_task(bind=True, name="i22.strict")
def strict(self, record):
    _note("strict", self, record)
'''

CLIENT_SCRIPT = '''
"""The public API from a client process: python i22_client.py < request.json"""
import json
import os
import sys

from celery import Celery, signature
from export_poller import get_export, track_export

request = json.load(sys.stdin)
out = {}


def callbacks(kind):
    if kind == "strict":
        return {"on_complete": signature("i22.strict", args=[1, 2])}
    return {"on_complete": signature("i22.on_complete"), "on_failure": signature("i22.on_failure")}


if "track" in request:
    out["track"] = []
    for item in request["track"]:
        kind = item.pop("callback", "normal")
        try:
            out["track"].append({"tid": track_export(**item, **callbacks(kind))})
        except Exception as exc:
            out["track"].append({"error": f"{type(exc).__name__}: {exc}"})
if "get" in request:
    out["get"] = {tid: get_export(tid) for tid in request["get"]}
if "send" in request:
    app = Celery("i22client", broker=os.environ["POLLER_REDIS_URL"])
    for item in request["send"]:
        app.send_task("exports.track", args=item["args"], kwargs=item["kwargs"],
                      queue=os.environ["POLLER_QUEUE"])
    out["send"] = len(request["send"])
print("I22-RESULT " + json.dumps(out, default=str))
'''


def _result(stdout: str, stderr: str) -> Any:
    for line in stdout.splitlines():
        if line.startswith("I22-RESULT "):
            return json.loads(line[len("I22-RESULT ") :])
    raise AssertionError(f"client printed no result:\n{stdout[-2000:]}\n{stderr[-3000:]}")


@dataclass
class Fleet:
    tmp: Path
    redis_server: RedisServer
    prefix: str = field(default_factory=lambda: f"i22{uuid.uuid4().hex[:6]}")
    queue: str = field(default_factory=lambda: f"i22-q-{uuid.uuid4().hex[:6]}")
    procs: dict[str, Proc] = field(default_factory=dict)
    sim_url: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = self.tmp / "app"
        self.run = self.tmp / "run"
        self.logs = self.tmp / "logs"
        for d in (self.app, self.run, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        (self.app / "i22_cb.py").write_text(CALLBACK_MODULE)
        (self.app / "i22_client.py").write_text(CLIENT_SCRIPT)
        self.results = redis.Redis(port=self.redis_server.port, db=1, socket_timeout=5)

    # -- configuration ---------------------------------------------------------------------

    def env(self, worker: bool = False) -> dict[str, str]:
        env = clean_env(FAST_SETTINGS)
        env.update(
            {
                "POLLER_REDIS_URL": self.redis_server.url(0),
                "POLLER_KEY_PREFIX": self.prefix,
                "POLLER_QUEUE": self.queue,
                "I22_CALLBACK_REDIS": self.redis_server.url(1),
                "PYTHONPATH": str(self.app),
            }
        )
        accounts = dict(ACCOUNTS)
        if not worker:
            accounts[GHOST[0]] = (GHOST[1], GHOST[2])
        for name, (provider, values) in accounts.items():
            pre = f"POLLER_ACCOUNTS__{name.upper()}__"
            env[pre + "PROVIDER"] = provider
            env[pre + "BASE_URL"] = self.sim_url
            env.update({pre + k: v for k, v in values.items()})
        return env

    # -- processes ---------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, self.run, env, self.logs / f"{len(self.procs):02d}-{name}.log")
        self.procs[name] = proc
        return proc

    def _ready(self, proc: Proc, marker: str) -> None:
        wait_for(
            lambda: marker in proc.log() or not proc.alive(),
            90,
            f"{proc.name} to start",
            proc.tail,
        )
        assert proc.alive(), f"{proc.name} exited at start-up\n{proc.tail()}"

    def start_simulator(self) -> None:
        argv = [EXPORT_POLLER, "simulate", "--port", "0", "--json", "--seed", "22"]
        argv += ["--cometly-limit", "10/3"]
        proc = self._start("simulator", argv, clean_env())

        def banner() -> str | None:
            for line in proc.log().splitlines():
                if line.startswith("{") and '"url"' in line:
                    return str(json.loads(line)["url"])
            return None

        self.sim_url = wait_for(lambda: banner() or not proc.alive(), 60, "simulator banner")
        assert proc.alive(), proc.tail()
        # README: a per-credential limit; SAYMON answers 429 + Retry-After and states nothing,
        # Seven Bridges states its budget (X-RateLimit-*)
        self.sim("/_sim/limits", {"provider": "saymon", "limit": "3/2"})
        self.sim("/_sim/limits", {"provider": "biodatacatalyst", "limit": "4/3"})

    def sim(self, path: str, body: Any = None) -> Any:
        return http_json(self.sim_url + path, body)

    def start_worker(self, name: str) -> None:
        argv = [CELERY, "-A", "export_poller", "worker", "--pool", "threads"]
        argv += ["--concurrency", "8", "--loglevel", "INFO", "-n", f"{name}-{self.prefix}@%h"]
        argv += ["-I", "i22_cb", "--without-mingle", "--without-gossip"]
        self._ready(self._start(name, argv, self.env(worker=True)), " ready.")

    def start_beat(self) -> None:
        argv = [CELERY, "-A", "export_poller", "beat", "--loglevel", "INFO"]
        argv += ["--schedule", str(self.run / "beat-schedule")]
        self._ready(self._start("beat", argv, self.env(worker=True)), "Starting")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.results.close()

    def diag(self) -> str:
        parts = [p.tail(25) for p in self.procs.values() if p.name != "simulator"]
        parts.append(f"callbacks: {self.callbacks()[-5:]}")
        return "\n".join(parts)

    # -- the public interface --------------------------------------------------------------

    def client(self, request: dict[str, Any]) -> Any:
        proc = subprocess.run(
            [str(Path(CELERY).parent / "python"), str(self.app / "i22_client.py")],
            input=json.dumps(request),
            cwd=self.run,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        return _result(proc.stdout, proc.stderr)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXPORT_POLLER, *args],
            cwd=self.run,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    def records(self, tids: list[str]) -> dict[str, Any]:
        return dict(self.client({"get": tids})["get"])

    def callbacks(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.results.lrange(CALLBACKS, 0, -1)]

    def callbacks_for(self, tid: str) -> list[dict[str, Any]]:
        return [c for c in self.callbacks() if c.get("tracking_id") == tid]


# ---------------------------------------------------------------------------------------------
# the scenario


def create_jobs(fleet: Fleet, jobs: dict[str, Job]) -> dict[str, str]:
    ids = {}
    for name, job in jobs.items():
        made = fleet.sim("/_sim/jobs", {"provider": job.provider, **job.spec})
        assert "id" in made, f"simulator refused {name}: {made}"
        ids[name] = str(made["id"])
    return ids


def _track_item(job: Job, export_id: str) -> dict[str, Any]:
    item: dict[str, Any] = {"provider": job.provider, "export_id": export_id}
    item["account"] = job.account
    item["callback"] = job.callback
    for key in ("timeout", "tracking_id", "metadata"):
        if getattr(job, key) is not None:
            item[key] = getattr(job, key)
    return item


def _track_cli(fleet: Fleet, job: Job, export_id: str) -> str:
    done = fleet.cli(
        "track",
        job.provider,
        export_id,
        "--account",
        job.account,
        "--on-complete",
        "i22.on_complete",
        "--on-failure",
        "i22.on_failure",
        "--metadata",
        '{"via": "cli"}',
        "--no-queue-check",
    )
    assert done.returncode == 0, f"track via CLI: {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout.strip().splitlines()[-1].strip()


def _send(job: Job, export_id: str) -> dict[str, Any]:
    kwargs = {
        "account": job.account,
        "tracking_id": job.tracking_id,
        "on_complete": {"task": "i22.on_complete"},
        "on_failure": {"task": "i22.on_failure"},
        "metadata": {"via": "exports.track"},
    }
    return {"args": [job.provider, export_id], "kwargs": kwargs}


def track_all(fleet: Fleet, jobs: dict[str, Job], ids: dict[str, str]) -> dict[str, str]:
    """Track every job the way its ``how`` says; a refused exports.track message too."""
    api = [name for name, job in jobs.items() if job.how == "api"]
    # the same export tracked again while active gets the same tracking id (README, API): asked
    # in the same client call, milliseconds later, since a quick export may otherwise have
    # finished before a later call (tracking by CLI takes seconds)
    items = [_track_item(jobs[n], ids[n]) for n in api]
    *tracked, again = fleet.client(
        {"track": [*items, _track_item(jobs["cometly-ok"], ids["cometly-ok"])]}
    )["track"]
    bad = {n: t for n, t in zip(api, tracked, strict=True) if "tid" not in t}
    assert not bad, f"track_export refused: {bad}"
    tids = {n: t["tid"] for n, t in zip(api, tracked, strict=True)}
    assert again == {"tid": tids["cometly-ok"]}, again
    ghost = Job(GHOST[0], {}, "refused")
    [refusal] = fleet.client({"track": [_track_item(ghost, "4242")]})["track"]
    assert "tid" not in refusal and "ghost" in str(refusal), f"a client-only account: {refusal}"
    for name, job in jobs.items():
        if job.how == "cli":
            tids[name] = _track_cli(fleet, job, ids[name])
    sends = [_send(job, ids[n]) for n, job in jobs.items() if job.how == "send"]
    refused = {"tracking_id": f"i22-refused-{uuid.uuid4().hex[:8]}"}
    refused |= {"on_failure": {"task": "i22.on_failure"}}
    sends.append({"args": ["comety", "12"], "kwargs": refused})
    fleet.client({"send": sends})
    for name, job in jobs.items():
        if job.how == "send":
            tids[name] = str(job.tracking_id)
    tids["refused"] = refused["tracking_id"]
    return tids


def kill_worker_mid_poll(fleet: Fleet, kill_id: str) -> None:
    """SIGKILL the worker while the simulator holds one of its polls (a slow answer)."""
    seen: dict[str, Any] = {}

    def slow_poll_arrived() -> bool:
        seen.update(fleet.sim(f"/_sim/jobs/cometly/{kill_id}"))
        return int(seen.get("polls", 0)) >= 2  # counted on arrival; "answered" on answer

    wait_for(slow_poll_arrived, 60, "the slow poll to reach the simulator", fleet.diag)
    fleet.procs["worker1"].stop(signal.SIGKILL)
    fleet.notes.append(f"worker killed with {seen['polls'] - seen['answered']} poll(s) unanswered")
    fleet.start_worker("worker2")


def cancel_when_running(fleet: Fleet, tid: str) -> None:
    wait_for(
        lambda: (fleet.records([tid])[tid] or {}).get("state") == "running",
        60,
        "the export to cancel to be running",
        fleet.diag,
        interval=0.5,
    )
    done = fleet.cli("cancel", tid, "--json")
    assert done.returncode == 0, f"cancel: {done.returncode}\n{done.stdout}{done.stderr}"


def read_commands(fleet: Fleet, tid: str, full: bool) -> None:
    """The CLI's read side; each must succeed."""
    runs = [
        ["status", tid],
        ["status", tid, "--json"],
        ["list", "--json"],
        ["watch", "--once", "--json"],
        ["metrics", "--json"],
    ]
    if full:
        runs += [
            ["status", tid[:12]],
            ["list"],
            ["list", "--stuck"],
            ["list", "--stuck", "--json"],
            ["list", "--state", "running", "--provider", "cgc"],
            ["list", "--older-than", "1s", "--account", "cometly"],
            ["watch", "--once"],
            ["health", "--json"],
        ]
    for argv in runs:
        done = fleet.cli(*argv)
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}{done.stderr}"


def wait_terminal(fleet: Fleet, jobs: dict[str, Job], tids: dict[str, str]) -> dict[str, Any]:
    want = {tids[n]: job.expect for n, job in jobs.items()}
    last: dict[str, Any] = {}

    def all_ended() -> bool:
        last.update(fleet.records(list(want)))
        return all((last.get(t) or {}).get("state") in TERMINAL for t in want)

    def why() -> str:
        open_ = {n: (last.get(tids[n]) or {}).get("state") for n in jobs}
        return f"{open_}\n{fleet.diag()}"

    wait_for(all_ended, 180, "every export to end", why, interval=1.0)
    wrong = {
        n: (last[tids[n]].get("state"), last[tids[n]].get("error"))
        for n, job in jobs.items()
        if last[tids[n]].get("state") != job.expect
    }
    assert not wrong, f"exports ended in the wrong state: {wrong}"
    return last


def _callback_kind(job: Job) -> str | None:
    if job.callback == "strict" or job.expect == "cancelled":
        return None
    return "on_complete" if job.expect == "completed" else "on_failure"


def wait_callbacks(fleet: Fleet, jobs: dict[str, Job], tids: dict[str, str]) -> None:
    want = [(n, tids[n], _callback_kind(j)) for n, j in jobs.items() if _callback_kind(j)]
    want.append(("refused", tids["refused"], "on_failure"))

    def missing() -> list[str]:
        seen = {(c["tracking_id"], c["kind"]) for c in fleet.callbacks()}
        return [name for name, tid, kind in want if (tid, kind) not in seen]

    wait_for(lambda: not missing(), 60, "every callback", lambda: f"{missing()}\n{fleet.diag()}")
    cancelled = fleet.callbacks_for(tids["cometly-cancel"])
    assert not cancelled, f"a cancelled export called back: {cancelled}"
    refused = [c for c in fleet.callbacks_for(tids["refused"]) if c["state"] == "refused"]
    assert refused, f"the refused exports.track did not call on_failure with 'refused': {refused}"


def _until_done(fleet: Fleet, argv: list[str], what: str) -> None:
    """Exit 1 means "not now" (an account held back): ask again until it is done."""
    last: list[subprocess.CompletedProcess[str]] = []

    def done() -> bool:
        last[:] = [fleet.cli(*argv)]
        assert last[0].returncode in (0, 1), f"{argv}: {last[0].stdout}{last[0].stderr}"
        return last[0].returncode == 0

    wait_for(done, 60, what, lambda: f"{last[0].stdout}{last[0].stderr}", interval=1.0)


def day_two(fleet: Fleet, jobs: dict[str, Job], tids: dict[str, str], ids: dict[str, str]) -> None:
    """Redeliver, refresh (with and without a callback), refusals, tracking a finished export."""
    ok, cgc = tids["cometly-ok"], tids["cgc-1"]
    _until_done(fleet, ["refresh", ok, "--callback", "--json"], "refresh --callback")
    _until_done(fleet, ["refresh", tids["bdc-1"], "--json"], "refresh")
    done = fleet.cli("redeliver", cgc, "--json")
    assert done.returncode == 0, f"redeliver: {done.stdout}{done.stderr}"
    refused = fleet.cli("redeliver", tids["cometly-cancel"], "--json")
    assert refused.returncode == 2, f"redeliver of a cancelled export: {refused.returncode}"
    wait_for(lambda: len(fleet.callbacks_for(ok)) >= 2, 60, "the refresh's callback", fleet.diag)
    wait_for(
        lambda: any(c.get("redeliveries") == 1 for c in fleet.callbacks_for(cgc)),
        60,
        "the redelivered callback, counted",
        fleet.diag,
    )
    retrack = fleet.client({"track": [_track_item(jobs["cometly-ok"], ids["cometly-ok"])]})
    new = retrack["track"][0].get("tid")
    assert new and new != ok, f"tracking a finished export again: {retrack}"
    wait_for(lambda: fleet.callbacks_for(new), 60, "the re-tracked export's callback", fleet.diag)


def note_coverage(fleet: Fleet, tids: dict[str, str], records: dict[str, Any]) -> None:
    """What the run reached that the test does not insist on (timing-dependent)."""
    dead = records.get(tids["cometly-deadletter"]) or {}
    shown = {k: v for k, v in dead.items() if "callback" in k or "dead" in k}
    fleet.notes.append(f"undispatchable callback, its record: {shown}")
    stats = fleet.sim("/_sim/stats")
    limited = {p: v.get("rate_limited") for p, v in stats.get("providers", {}).items()}
    fleet.notes.append(f"simulator 429s per provider: {limited}; requests {stats.get('total')}")


def exercise(fleet: Fleet) -> None:
    jobs = _jobs()
    fleet.start_simulator()
    ids = create_jobs(fleet, jobs)
    fleet.start_worker("worker1")
    fleet.start_beat()
    tids = track_all(fleet, jobs, ids)
    kill_worker_mid_poll(fleet, ids["cometly-kill"])
    cancel_when_running(fleet, tids["cometly-cancel"])
    read_commands(fleet, tids["cgc-1"], full=True)
    records = wait_terminal(fleet, jobs, tids)
    wait_callbacks(fleet, jobs, tids)
    day_two(fleet, jobs, tids, ids)
    read_commands(fleet, tids["cometly-ok"], full=False)
    dead = tids["cometly-deadletter"]
    fleet.notes.append(f"tracked {len(tids)} exports")
    records.update(fleet.records([dead]))
    note_coverage(fleet, tids, records)


# ---------------------------------------------------------------------------------------------
# the audit, shared by both runs


def audit_run(
    tmp: Path, server: RedisServer, lines: list[bytes], control: tuple[str, str, Any]
) -> Audit:
    finder = KeyFinder(server.port)
    try:
        audit = audit_lines(lines, finder)
    finally:
        finder.close()
    assert not audit.orphans, f"commands from lua with no script call before: {audit.orphans[:5]}"
    check_control(audit, *control)
    service = audit.without({control[0], control[1]})
    (tmp / "issue22-scripts.json").write_text(json.dumps(service.as_json(), indent=1))
    return service


def assert_keys_declared(service: Audit, problems: list[str], notes: list[str]) -> None:
    summary = (
        f"{service.lines} MONITOR lines; {sum(service.calls.values())} script calls of "
        f"{len(service.calls)} scripts ran {sum(service.commands.values())} commands; "
        + "; ".join(notes)
    )
    if problems:
        report = service.report() or "none"
        pytest.fail(
            "the run itself failed (undeclared keys seen so far: see below):\n"
            + "\n".join(problems)
            + f"\n{summary}\n{report}",
            pytrace=False,
        )
    if len(service.calls) < 3 or sum(service.commands.values()) < 50:
        pytest.fail(f"too few scripts seen to judge anything: {summary}", pytrace=False)
    if service.violations:
        pytest.fail(
            f"{len(service.violations)} key uses by commands of {len(service.by_script())} of "
            f"{len(service.calls)} scripts name keys not in that call's KEYS ({summary}):\n"
            + service.report(),
            pytrace=False,
        )


def _run(problems: list[str], step: Callable[[], None]) -> None:
    try:
        step()
    except AssertionError as exc:
        problems.append(str(exc))


@pytest.mark.timeout(600)
def test_every_key_a_fleet_script_touches_arrives_in_keys(tmp_path: Path) -> None:
    with monitored_redis(tmp_path / "redis") as (server, monitor):
        control = run_control_scripts(server.port, "i22-control")
        fleet = Fleet(tmp_path, server)
        problems: list[str] = []
        started = time.monotonic()
        try:
            _run(problems, lambda: exercise(fleet))
        finally:
            fleet.stop()
        fleet.notes.append(f"scenario {time.monotonic() - started:.0f} s")
        lines = monitor.stop()
        service = audit_run(tmp_path, server, lines, control)
    assert_keys_declared(service, problems, fleet.notes)


@pytest.mark.timeout(600)
def test_every_key_a_demo_script_touches_arrives_in_keys(tmp_path: Path) -> None:
    """``export-poller demo --redis-url``: the README's own tour, on our watched Redis."""
    (tmp_path / "run").mkdir()
    with monitored_redis(tmp_path / "redis") as (server, monitor):
        control = run_control_scripts(server.port, "i22-control")
        demo = subprocess.run(
            [EXPORT_POLLER, "demo", "--redis-url", server.url(0), "--json"],
            cwd=tmp_path / "run",
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=420,
            check=False,
        )
        lines = monitor.stop()
        service = audit_run(tmp_path, server, lines, control)
    problems = []
    if demo.returncode != 0:
        problems.append(f"demo exit {demo.returncode}:\n{demo.stdout[-3000:]}{demo.stderr[-3000:]}")
    assert_keys_declared(service, problems, [f"demo: {demo.stdout.strip()[:300]}"])
