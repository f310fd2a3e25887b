"""Harness for the independent acceptance tests of issues 12 and 13, from the README and issues.

(Kept out of conftest.py, which other independent suites share; fixtures live in the test
modules.)

It starts, per stack: a private ``redis-server`` on a free port, a fake Cometly status API (the
documented ``GET /public-api/v1/events/exports/{id}`` with ``Authorization: Bearer``), real
``celery -A export_poller worker --pool threads`` and ``celery -A export_poller beat``
subprocesses whose working directory is a temporary directory (never the repository root), and
an *application* of our own: a temporary directory holding its own ``tasks.py`` (a Celery app
with two callback tasks) and its own ``config/`` package, consumed by its own worker on its own
queue. Every callback invocation is RPUSHed (as JSON) to a Redis list, so a test counts
callbacks per tracking id. The test process itself never imports ``export_poller``: everything
goes through subprocesses, the way a user runs it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis

BIN = Path(sys.executable).parent
CALLBACKS_KEY = "indep:callbacks"
APP_QUEUE = "appq"
POLLER_QUEUE = "export-poller"  # the service's queue, as named in the README's send_task example

# Fast but documented settings: short backoff, frequent sweeps, a short lease (HTTP timeouts
# stay well inside it) and a short rescue grace, so crashes are recovered within a test.
FAST_SETTINGS = {
    "POLLER_BACKOFF_INITIAL": "1",
    "POLLER_BACKOFF_FACTOR": "1.5",
    "POLLER_BACKOFF_MAX": "2",
    "POLLER_BACKOFF_FLOOR": "0.5",
    "POLLER_SWEEP_INTERVAL": "1",
    "POLLER_RESCUE_GRACE": "5",
    "POLLER_LEASE_SECONDS": "10",
    "POLLER_HTTP_CONNECT_TIMEOUT": "2",
    "POLLER_HTTP_READ_TIMEOUT": "4",
    "POLLER_ENQUEUE_HORIZON": "10",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    pred: Callable[[], Any],
    timeout: float,
    what: str,
    diag: Callable[[], str] = lambda: "",
    interval: float = 0.1,
) -> Any:
    """Poll ``pred`` until it returns something truthy; fail with ``what`` and ``diag()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{diag()}")
        time.sleep(interval)


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POLLER_", "CELERY_", "APP_")) and k != "PYTHONPATH"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


_ids = itertools.count(int(time.time()) % 10**9 * 10**5)


def export_ids(n: int) -> list[str]:
    """Fresh Cometly export ids (digits, as the provider's ids are)."""
    return [str(next(_ids)) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# subprocesses


class Proc:
    """A subprocess in its own session (so its whole group can be signalled), logging to a file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.name = name
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 40) -> str:
        lines = self.log().splitlines()[-n:]
        return f"--- {self.name} ({self.log_path}) last {len(lines)} lines ---\n" + "\n".join(lines)

    def send(self, sig: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        self.send(sig)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait(timeout=30)
        # a SIGKILL of the leader can leave children of its group behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()


class RedisServer:
    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        self.proc = Proc("redis-server", argv, workdir, base_env(), workdir / "redis.log")
        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            wait_until(
                lambda: self._ping(client), 20, "redis-server to answer PING", self.proc.tail
            )
        finally:
            client.close()

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.stop(signal.SIGKILL, grace=5)


# --------------------------------------------------------------------------------------------
# the fake Cometly API (from the provider's document: queued/processing/completed/failed)


@dataclass
class FakeJob:
    polls_before_done: int = 2  # answers of queued/processing before the final one
    outcome: str = "completed"  # or "failed"
    polls: int = 0


@dataclass
class FakeCometly:
    """``GET /public-api/v1/events/exports/{id}`` with ``Authorization: Bearer TOKEN``.

    ``tokens`` maps a token to an account name; requests are logged per account. An unknown
    export id answers 404 (the document: "Export not found"), a missing or wrong token 401.
    """

    tokens: dict[str, str]
    delay: float = 0.0
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    requests: dict[str, list[tuple[float, str, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: int = 0

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def add_job(self, export_id: str, polls_before_done: int = 2, outcome: str = "completed"):
        with self.lock:
            self.jobs[export_id] = FakeJob(polls_before_done, outcome)

    def total(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.requests.values())

    def polls_of(self, export_id: str) -> int:
        with self.lock:
            return sum(1 for v in self.requests.values() for (_, eid, _) in v if eid == export_id)

    def in_flight(self) -> int:
        with self.lock:
            return self.inflight

    # -- request handling -------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        m = re.fullmatch(r"/public-api/v1/events/exports/([^/?]+)(\?.*)?", h.path)
        if not m:
            return self._send(h, 404, {"message": "Not found"})
        export_id = m.group(1)
        auth = h.headers.get("Authorization", "")
        account = (
            self.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        )
        if account is None:
            return self._send(h, 401, {"message": "Missing or invalid API key"})
        with self.lock:
            self.inflight += 1
        try:
            if self.delay:
                time.sleep(self.delay)
            code, body = self._answer(export_id)
            with self.lock:
                self.requests[account].append((time.time(), export_id, code))
            self._send(h, code, body)
        finally:
            with self.lock:
                self.inflight -= 1

    def _answer(self, export_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            job = self.jobs.get(export_id)
            if job is None:
                return 404, {"message": "Export not found"}
            n = job.polls
            job.polls += 1
        created = "2024-01-15T10:30:00Z"
        ident = int(export_id) if export_id.isdigit() else export_id
        busy = "Export is being processed. Please check back in a few minutes."
        if n < job.polls_before_done:
            state = "queued" if n == 0 else "processing"
            return 200, {
                "export_id": ident,
                "status": state,
                "created_at": created,
                "message": busy,
            }
        if job.outcome == "failed":
            return 200, {
                "export_id": ident,
                "status": "failed",
                "created_at": created,
                "message": "Export failed. Please try again in a few minutes.",
            }
        now = datetime.now(UTC)
        return 200, {
            "export_id": ident,
            "status": "completed",
            "created_at": created,
            "completed_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "download_url": f"https://bucket.s3.amazonaws.com/exports/{uuid.uuid4()}.json.gz"
            "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
            "expires_at": (now + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


# --------------------------------------------------------------------------------------------
# the application: its own tasks.py and config/ package, its own queue

APP_CONFIG_INIT = '''\
"""The application's own `config` package (a Django-style name)."""

OWNER = "myapp"
'''

APP_CONFIG_SETTINGS = """\
import os

BROKER_URL = os.environ["APP_BROKER_URL"]
RESULTS_URL = os.environ["APP_RESULTS_URL"]
APP_QUEUE = os.environ.get("APP_QUEUE", "appq")
"""

APP_TASKS = '''\
"""The application's own `tasks` module, named like every Celery application's."""

import json
import time

import redis
from celery import Celery
from config.settings import APP_QUEUE, BROKER_URL, RESULTS_URL
from export_poller import track_export

app = Celery("myapp", broker=BROKER_URL)
app.conf.update(
    task_default_queue=APP_QUEUE,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)
_results = redis.Redis.from_url(RESULTS_URL)


def _note(task, name, record, args, kwargs):
    info = task.request.delivery_info or {}
    entry = {
        "task": name,
        "record": record,
        "extra_args": list(args),
        "kwargs": kwargs,
        "routing_key": info.get("routing_key"),
        "task_id": task.request.id,
        "at": time.time(),
    }
    _results.rpush("indep:callbacks", json.dumps(entry, default=str))


@app.task(bind=True, name="myapp.export_ready")
def export_ready(self, record, *args, **kwargs):
    _note(self, "myapp.export_ready", record, args, kwargs)


@app.task(bind=True, name="myapp.export_failed")
def export_failed(self, record, *args, **kwargs):
    _note(self, "myapp.export_failed", record, args, kwargs)


def start_export(export_id, **kwargs):
    """How the application tracks an export: its callbacks go to its own queue."""
    return track_export(
        "cometly",
        export_id,
        on_complete=export_ready.s().set(queue=APP_QUEUE),
        on_failure=export_failed.s().set(queue=APP_QUEUE),
        **kwargs,
    )
'''


def make_app_dir(path: Path) -> Path:
    (path / "config").mkdir(parents=True)
    (path / "config" / "__init__.py").write_text(APP_CONFIG_INIT)
    (path / "config" / "settings.py").write_text(APP_CONFIG_SETTINGS)
    (path / "tasks.py").write_text(APP_TASKS)
    return path


# --------------------------------------------------------------------------------------------
# a whole stack


class Stack:
    def __init__(
        self,
        tmp: Path,
        broker_url: str | None = None,
        fake_delay: float = 0.0,
        extra_env: dict[str, str] | None = None,
    ):
        self.tmp = tmp
        self.extra_env = dict(extra_env or {})
        self.run_dir = tmp / "run"  # where the service's worker and beat run by default
        self.run_dir.mkdir(parents=True)
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.procs: dict[str, Proc] = {}
        self._n = 0
        self.token = f"sk-indep-{uuid.uuid4().hex}"  # a secret that must never leak
        self.key_prefix = f"indep{uuid.uuid4().hex[:6]}"
        self.redis = RedisServer(tmp / "redis")
        self.broker_url = broker_url
        self.fake = FakeCometly(tokens={self.token: "cometly"}, delay=fake_delay)
        self.fake.start()
        self.app_dir = make_app_dir(tmp / "app")
        self.results = redis.Redis.from_url(self.redis.url(15), socket_timeout=5)

    # -- configuration ----------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = base_env()
        env.update(FAST_SETTINGS)
        env.update(
            {
                "POLLER_REDIS_URL": self.redis.url(0),
                "POLLER_KEY_PREFIX": self.key_prefix,
                "POLLER_ACCOUNTS__COMETLY__PROVIDER": "cometly",
                "POLLER_ACCOUNTS__COMETLY__TOKEN": self.token,
                "POLLER_ACCOUNTS__COMETLY__BASE_URL": self.fake.base_url,
                "APP_BROKER_URL": self.broker_url or self.redis.url(0),
                "APP_RESULTS_URL": self.redis.url(15),
                "APP_QUEUE": APP_QUEUE,
            }
        )
        if self.broker_url:
            env["POLLER_BROKER_URL"] = self.broker_url
        env.update(self.extra_env)
        env.update(extra)
        return env

    # -- processes --------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None) -> Proc:
        self._n += 1
        old = self.procs.get(name)
        if old is not None:
            old.stop()
        proc = Proc(name, argv, cwd, env or self.env(), self.logs / f"{self._n:02d}-{name}.log")
        self.procs[name] = proc
        return proc

    def _wait_ready(self, proc: Proc, marker: str) -> None:
        wait_until(
            lambda: (marker in proc.log()) or not proc.alive(),
            90,
            f"{proc.name} to start",
            proc.tail,
            interval=0.2,
        )
        assert proc.alive(), f"{proc.name} exited with {proc.popen.returncode}\n{proc.tail()}"

    def start_worker(self, name: str = "worker", cwd: Path | None = None) -> Proc:
        node = f"{name}-{self._n + 1}-{uuid.uuid4().hex[:4]}@%h"
        argv = [str(BIN / "celery"), "-A", "export_poller", "worker", "--pool", "threads"]
        argv += ["--concurrency", "8", "--loglevel", "INFO", "-n", node]
        argv += ["--without-mingle", "--without-gossip"]
        proc = self._start(name, argv, cwd or self.run_dir, None)
        self._wait_ready(proc, " ready.")
        return proc

    def start_beat(self, cwd: Path | None = None) -> Proc:
        where = cwd or self.run_dir
        argv = [str(BIN / "celery"), "-A", "export_poller", "beat", "--loglevel", "INFO"]
        argv += ["--schedule", str(where / f"beat-schedule-{self._n + 1}")]
        proc = self._start("beat", argv, where, None)
        self._wait_ready(proc, "Starting")
        return proc

    def start_app_worker(self, queues: str = APP_QUEUE) -> Proc:
        """The application's own worker (``celery -A tasks``) consuming its own queue(s)."""
        node = f"app-{uuid.uuid4().hex[:4]}@%h"
        argv = [str(BIN / "celery"), "-A", "tasks", "worker", "--pool", "threads"]
        argv += ["--concurrency", "4", "--loglevel", "INFO", "-Q", queues, "-n", node]
        argv += ["--without-mingle", "--without-gossip"]
        env = self.env(PYTHONPATH=str(self.app_dir))
        proc = self._start("app-worker", argv, self.app_dir, env)
        self._wait_ready(proc, " ready.")
        return proc

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.results.close()
        self.fake.stop()
        self.redis.stop()

    # -- commands ---------------------------------------------------------------------------

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """``export-poller ARGS`` run from the application's directory."""
        return subprocess.run(
            [str(BIN / "export-poller"), *args],
            cwd=self.app_dir,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def app_script(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``code`` as a script in the application directory (cwd, first on sys.path)."""
        self._n += 1
        script = self.app_dir / f"script_{self._n}.py"
        script.write_text(textwrap.dedent(code))
        return subprocess.run(
            [str(BIN / "python"), str(script), *args],
            cwd=self.app_dir,
            env=self.env(PYTHONPATH=str(self.app_dir)),
            capture_output=True,
            text=True,
            timeout=120,
        )

    # -- callbacks --------------------------------------------------------------------------

    def callbacks(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.results.lrange(CALLBACKS_KEY, 0, -1)]

    def callbacks_for(self, tid: str) -> list[dict[str, Any]]:
        return [c for c in self.callbacks() if (c.get("record") or {}).get("tracking_id") == tid]

    def callback_counts(self) -> Counter[str]:
        return Counter((c.get("record") or {}).get("tracking_id") for c in self.callbacks())

    def diag(self) -> str:
        parts = [p.tail() for p in self.procs.values()]
        for p in self.procs.values():
            notable = [
                ln
                for ln in p.log().splitlines()
                if re.search(r"WARNING|ERROR|CRITICAL|unregistered|Error\b", ln)
                and "SecurityWarning" not in ln
            ]
            if notable:
                parts.append(f"--- {p.name}: warnings and errors ---\n" + "\n".join(notable[-10:]))
        parts.append(f"callbacks so far ({len(self.callbacks())}), last: {self.callbacks()[-3:]}")
        parts.append(f"fake provider requests: {self.fake.total()}")
        return "\n".join(parts)

    def wait_callback(self, tid: str, timeout: float = 60) -> list[dict[str, Any]]:
        return wait_until(
            lambda: self.callbacks_for(tid), timeout, f"a callback for {tid}", self.diag, 0.2
        )

    def settle(self) -> None:
        """A quiet period long enough for a re-sent callback to show up (rescue grace, sweeps)."""
        time.sleep(float(FAST_SETTINGS["POLLER_RESCUE_GRACE"]) + 3)


@contextlib.contextmanager
def running_stack(tmp: Path, **kwargs: Any) -> Iterator[Stack]:
    stack = Stack(tmp, **kwargs)
    try:
        yield stack
    finally:
        stack.stop()
