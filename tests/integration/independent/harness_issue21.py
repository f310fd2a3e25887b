"""Harness for the independent acceptance tests of issue 21, written from the README alone.

(Kept out of conftest.py, which other independent suites share; the fixtures live in the test
modules.)

Per stack: a private ``redis-server`` on a free port; its own ``POLLER_KEY_PREFIX`` and
``POLLER_QUEUE``; real ``celery -A export_poller worker --pool threads`` and ``celery -A
export_poller beat`` subprocesses (cwd: a temporary directory), configured only through the
documented ``POLLER_*`` variables; and a fake provider of the test's own, served over real HTTP
by a thread of the test process (``FakeServer``). Exports are tracked and read back with the
public API (``track_export``, ``get_export``, ``refresh_export``) in a client subprocess, so each
stack's settings are read fresh from its own environment and the test process never imports
``export_poller``. Callbacks are Celery tasks of a small module of ours, loaded into the worker
with ``-I``, that RPUSH every invocation (as JSON) to a Redis list in a database the service does
not use, so a test counts callbacks per export.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[3]


def _bin_dir() -> Path:
    """The virtualenv's bin: the running interpreter's, else the repository's ``.venv``."""
    here = Path(sys.executable).parent
    if (here / "celery").exists():
        return here
    return REPO / ".venv" / "bin"


BIN = _bin_dir()
PYTHON = str(BIN / "python")
CALLBACK_LIST = "indep21:callbacks"
CALLBACK_DB = 13  # the service uses the database of POLLER_REDIS_URL (0) only

# Quick but documented settings: backoff ceilings of 1-2 s, a sweep every second, a short rescue
# grace, so a test sees several polls (and any re-sent callback) within a minute.
FAST = {
    "POLLER_BACKOFF_INITIAL": "1",
    "POLLER_BACKOFF_MAX": "2",
    "POLLER_SWEEP_INTERVAL": "1",
    "POLLER_RESCUE_GRACE": "5",
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
    interval: float = 0.2,
) -> Any:
    """Poll ``pred`` until it returns something truthy; fail with ``what`` and ``diag()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diag()}")
        time.sleep(interval)


def wait_or_give_up(pred: Callable[[], Any], timeout: float, interval: float = 0.2) -> bool:
    """Like ``wait_until``, but say whether ``pred`` came true instead of failing: the caller
    gathers the facts of what happened and asserts on them."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# --------------------------------------------------------------------------------------------
# the fake provider's HTTP side


Handler = Callable[[BaseHTTPRequestHandler, bytes], None]


class FakeServer:
    """A threading HTTP/1.1 server on a free port; every request goes to ``handle(h, body)``."""

    def __init__(self, handle: Handler) -> None:
        self.stopping = threading.Event()

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                handle(self, self.rfile.read(length) if length else b"")

            do_GET = _any  # the names BaseHTTPRequestHandler looks up
            do_POST = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 1024
        self.port = int(self.server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def send(
    h: BaseHTTPRequestHandler,
    status: int,
    body: Any,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer with a JSON body (or bytes sent as they are, as text/html)."""
    if isinstance(body, bytes):
        data, ctype = body, "text/html"
    else:
        data, ctype = json.dumps(body).encode(), "application/json"
    try:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)
    except OSError:
        pass  # the client went away


def sb_error(status: int, code: int, message: str) -> dict[str, Any]:
    """The Seven Bridges error body, as seed 002 shows it: {status, code, message, more_info}."""
    return {
        "status": status,
        "code": code,
        "message": message,
        "more_info": f"https://sb-biodatacatalyst.readme.io/reference/api-status-codes#{code}",
    }


def has_json_content_type(h: BaseHTTPRequestHandler) -> bool:
    """Seed 002/004: ``Content-type: application/json`` is a required header."""
    value = h.headers.get("Content-Type")  # header names are case-insensitive here
    return value is not None and value.split(";")[0].strip().lower() == "application/json"


SB_STATES = {"pending": "PENDING", "running": "RUNNING", "completed": "COMPLETED"}


def sb_resource(base_url: str, export_id: str, state: str) -> dict[str, Any]:
    """One export job as seed 002 (and seed 004's ``resource``) documents it."""
    res: dict[str, Any] = {
        "href": f"{base_url}/v2/storage/exports/{export_id}",
        "id": export_id,
        "state": SB_STATES[state],
        "source": {"file": "567890abc9b0307bc0414164"},
        "destination": {"volume": "rfranklin/output", "location": f"{export_id}.vcf"},
        "started_on": "2016-06-15T19:17:39Z",
        "properties": {"sse_algorithm": "AES256", "aws_storage_class": "STANDARD"},
        "overwrite": False,
    }
    if state == "completed":
        res["finished_on"] = "2016-06-15T19:17:41Z"
        res["result"] = {
            "href": f"{base_url}/v2/files/568e69abe9b0307bc0419876",
            "id": "568e69abe9b0307bc0419876",
            "name": f"{export_id}.vcf",
        }
    return res


COMETLY_BUSY = "Export is being processed. Please check back in a few minutes."


def cometly_body(export_id: str, status: str) -> dict[str, Any]:
    """Seed 003's answers: queued / processing carry a message; completed a download URL."""
    body: dict[str, Any] = {
        "export_id": int(export_id),
        "status": status,
        "created_at": "2024-01-15T10:30:00Z",
    }
    if status == "completed":
        body["completed_at"] = "2024-01-15T10:33:42Z"
        body["download_url"] = (
            f"https://bucket.s3.amazonaws.com/exports/{uuid.uuid4()}.json.gz"
            "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc"
        )
        body["expires_at"] = "2024-01-15T10:48:42Z"
    else:
        body["message"] = COMETLY_BUSY
    return body


COMETLY_PATH = re.compile(r"^/public-api/v1/events/exports/([^/?]+)$")


def bearer(h: BaseHTTPRequestHandler) -> str:
    auth = h.headers.get("Authorization", "")
    return auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""


# --------------------------------------------------------------------------------------------
# subprocesses


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POLLER_", "CELERY_", "PYTEST_", "INDEP21_"))
        and k.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "PYTHONPATH"}
    }
    env.update(
        {
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


class Proc:
    """A subprocess in its own session (so its whole group can be signalled), logging to a file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.name = name
        self.log_path = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
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

    def tail(self, n: int = 30) -> str:
        lines = self.log().splitlines()[-n:]
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(lines)

    def stop(self, grace: float = 10.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers of the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


CALLBACK_MODULE = f'''
"""Callbacks of the independent tests of issue 21: record every invocation in Redis."""
import json
import os
import time

import redis
from celery import shared_task

_R = redis.Redis.from_url(os.environ["INDEP21_CALLBACK_REDIS"])


def _record(kind, record):
    record = record if isinstance(record, dict) else {{"raw": repr(record)}}
    status = record.get("status") or {{}}
    _R.rpush(
        "{CALLBACK_LIST}",
        json.dumps(
            {{
                "kind": kind,
                "t": time.time(),
                "tracking_id": record.get("tracking_id"),
                "export_id": record.get("export_id"),
                "account": record.get("account"),
                "state": record.get("state"),
                "status_state": status.get("state") if isinstance(status, dict) else None,
                "error": record.get("error"),
            }},
            default=str,
        ),
    )


@shared_task(name="indep21_callbacks.on_complete")
def on_complete(record, *args, **kwargs):
    _record("on_complete", record)


@shared_task(name="indep21_callbacks.on_failure")
def on_failure(record, *args, **kwargs):
    _record("on_failure", record)
'''

CLIENT_SCRIPT = '''
"""The client side, through the public API only: python indep21_client.py CMD < spec.json"""
import json
import sys
import time

from celery import signature
from export_poller import get_export, track_export
from export_poller.api import refresh_export

cmd = sys.argv[1]
if cmd == "track-on-signal":  # imports done: say so, then track when told to (a line "go")
    spec = json.loads(sys.stdin.readline())
    print("INDEP21-READY", flush=True)
    if sys.stdin.readline().strip() != "go":  # the test gave up: track nothing
        sys.exit(0)
    cmd = "track"
else:
    spec = json.load(sys.stdin)
out = []
if cmd == "track":
    for item in spec:
        tid = track_export(
            item["provider"],
            item["export_id"],
            account=item.get("account"),
            on_complete=None if item.get("bare") else signature("indep21_callbacks.on_complete"),
            on_failure=None if item.get("bare") else signature("indep21_callbacks.on_failure"),
            timeout=item.get("timeout"),
        )
        out.append({"tid": tid, "t": time.time()})
elif cmd == "get":
    out = {tid: get_export(tid) for tid in spec}
elif cmd == "refresh":
    for tid in spec:
        try:
            out.append({"ok": True, "record": refresh_export(tid)})
        except Exception as exc:  # noqa: BLE001
            out.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
print("INDEP21-RESULT " + json.dumps(out, default=str))
'''


class Stack:
    """One private Redis, its own key prefix and queue, and the worker/beat a test starts."""

    def __init__(self, tmp: Path, accounts: dict[str, dict[str, str]], settings: dict[str, str]):
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.app_dir = tmp / "app"
        self.logs = tmp / "logs"
        for d in (self.run_dir, self.app_dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        (self.app_dir / "indep21_callbacks.py").write_text(CALLBACK_MODULE)
        (self.app_dir / "indep21_client.py").write_text(CLIENT_SCRIPT)
        self.procs: list[Proc] = []
        self.clients: list[subprocess.Popen[str]] = []  # tracking clients waiting for a signal
        tag = uuid.uuid4().hex[:8]
        self.key_prefix = f"i21-{tag}"
        self.queue = f"i21-q-{tag}"
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        argv = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
        self.procs.append(Proc("redis", argv, tmp, base_env(), self.logs / "redis.log"))
        self.callback_redis = redis.Redis(port=self.redis_port, db=CALLBACK_DB, socket_timeout=5)
        wait_until(self._redis_up, 20, "redis-server to answer PING", self.diag)
        self.settings = dict(settings)
        for name, values in accounts.items():
            for key, value in values.items():
                self.settings[f"POLLER_ACCOUNTS__{name.upper()}__{key.upper()}"] = value

    def _redis_up(self) -> bool:
        try:
            return bool(self.callback_redis.ping())
        except redis.RedisError:
            return False

    def env(self) -> dict[str, str]:
        env = base_env()
        env.update(
            {
                "POLLER_REDIS_URL": self.redis_url,
                "POLLER_KEY_PREFIX": self.key_prefix,
                "POLLER_QUEUE": self.queue,
                "INDEP21_CALLBACK_REDIS": f"redis://127.0.0.1:{self.redis_port}/{CALLBACK_DB}",
                "PYTHONPATH": str(self.app_dir),
            }
        )
        env.update(self.settings)
        return env

    # -- processes --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], marker: str) -> Proc:
        proc = Proc(name, argv, self.run_dir, self.env(), self.logs / f"{name}.log")
        self.procs.append(proc)
        wait_until(
            lambda: marker in proc.log() or not proc.alive(), 90, f"{name} to start", proc.tail
        )
        assert proc.alive(), f"{name} exited with {proc.popen.returncode}\n{proc.tail()}"
        return proc

    def start_worker(self, concurrency: int = 4, loglevel: str = "INFO") -> Proc:
        argv = [str(BIN / "celery"), "-A", "export_poller", "worker", "--pool", "threads"]
        argv += ["--concurrency", str(concurrency), "--loglevel", loglevel]
        argv += ["-n", f"i21-{uuid.uuid4().hex[:6]}@%h", "-I", "indep21_callbacks"]
        argv += ["--without-gossip", "--without-mingle"]
        return self._spawn("worker", argv, " ready.")

    def start_beat(self) -> Proc:
        argv = [str(BIN / "celery"), "-A", "export_poller", "beat", "--loglevel", "INFO"]
        argv += ["--schedule", str(self.tmp / "beat-schedule")]
        return self._spawn("beat", argv, "Starting")

    def check_alive(self) -> None:
        for proc in self.procs:
            assert proc.alive(), f"{proc.name} exited with {proc.popen.returncode}\n{proc.tail()}"

    def stop(self) -> None:
        for client in self.clients:  # one a failed test never signalled
            if client.poll() is None:
                client.kill()
            if client.stdout is not None and not client.stdout.closed:
                client.communicate(timeout=30)  # reaps it and closes its pipes
        for proc in reversed(self.procs):
            proc.stop()
        self.callback_redis.close()

    # -- the client side --------------------------------------------------------------------

    def client(self, cmd: str, spec: Any, timeout: float = 300) -> Any:
        proc = subprocess.run(
            [PYTHON, str(self.app_dir / "indep21_client.py"), cmd],
            input=json.dumps(spec).encode(),
            cwd=self.run_dir,
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        text = proc.stdout.decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("INDEP21-RESULT "):
                return json.loads(line[len("INDEP21-RESULT ") :])
        err = proc.stderr.decode(errors="replace")
        raise AssertionError(
            f"client {cmd} failed ({proc.returncode}):\n{text[-2000:]}{err[-3000:]}"
        )

    def track_on_signal(self, items: list[dict[str, Any]]) -> Callable[[], list[tuple[str, float]]]:
        """Start a client that has imported everything and waits; calling the returned function
        tracks ``items`` at once (no interpreter start-up in between) and returns as ``track``."""
        proc = subprocess.Popen(
            [PYTHON, str(self.app_dir / "indep21_client.py"), "track-on-signal"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.run_dir,
            env=self.env(),
            text=True,
        )
        self.clients.append(proc)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(items) + "\n")
        proc.stdin.flush()
        first = proc.stdout.readline()
        assert first.startswith("INDEP21-READY"), first + proc.stdout.read()

        def go() -> list[tuple[str, float]]:
            out, _ = proc.communicate("go\n", timeout=120)
            for line in out.splitlines():
                if line.startswith("INDEP21-RESULT "):
                    return [(r["tid"], r["t"]) for r in json.loads(line[15:])]
            raise AssertionError(f"tracking client failed ({proc.returncode}):\n{out[-3000:]}")

        return go

    def track(self, items: list[dict[str, Any]]) -> list[tuple[str, float]]:
        """track_export for each item; (tracking id, time.time() when it returned)."""
        return [(r["tid"], r["t"]) for r in self.client("track", items)]

    def records(self, tids: list[str]) -> dict[str, Any]:
        return dict(self.client("get", tids))

    def refresh(self, tids: list[str]) -> list[dict[str, Any]]:
        return list(self.client("refresh", tids))

    # -- callbacks --------------------------------------------------------------------------

    def callbacks(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.callback_redis.lrange(CALLBACK_LIST, 0, -1)]

    def callbacks_by_export(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for cb in self.callbacks():
            out.setdefault(str(cb["export_id"]), []).append(cb)
        return out

    def watch_for_duplicates(self, seconds: float) -> Counter[str]:
        """Observe the callbacks for ``seconds`` (a re-sent callback needs the rescue grace and
        a sweep to show up); return the count per export id at the end. This is an observation
        window, not a synchronisation: nothing is expected to happen in it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.25)
        return Counter(str(cb["export_id"]) for cb in self.callbacks())

    def diag(self) -> str:
        parts = [p.tail() for p in self.procs if p.name != "redis"]
        for p in self.procs:
            notable = [
                ln
                for ln in p.log().splitlines()
                if re.search(r"WARNING|ERROR|CRITICAL|Traceback", ln)
            ]
            if notable:
                parts.append(f"--- {p.name}: warnings and errors ---\n" + "\n".join(notable[-12:]))
        with contextlib.suppress(redis.RedisError):
            parts.append(f"callbacks so far: {self.callbacks()[-10:]}")
        return "\n".join(parts)


@contextlib.contextmanager
def running_stack(
    tmp: Path, accounts: dict[str, dict[str, str]], settings: dict[str, str]
) -> Iterator[Stack]:
    stack = Stack(tmp, accounts, settings)
    try:
        yield stack
    finally:
        stack.stop()
