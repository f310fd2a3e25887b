"""Harness for test_hostile.py, written from the README, the providers' API documents and issue 10.

Everything here is black-box: a private redis-server, real `celery worker` / `celery beat`
subprocesses of `export_poller`, the public API called from a separate Python process (so the
settings it reads are exactly the environment given), the CLI, and a hostile provider server
written for these tests (it implements the documented Cometly, Seven Bridges and SAYMON status
calls and misbehaves on purpose).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import redis

BIN = Path(sys.executable).parent
CALLBACK_KEY = "hostile:callbacks"
CALLBACK_QUEUE = "hostile-cb"
CALLBACK_TASK = "hostile.record"

# The callback module the workers import (-I). It records every invocation in Redis, so a test can
# count callbacks per export. `default=repr` keeps it recording whatever shape the record has.
CALLBACK_MODULE = f'''
import json
import os

import redis
from celery import shared_task

_r = redis.Redis.from_url(os.environ["HOSTILE_REDIS_URL"])


@shared_task(name="{CALLBACK_TASK}")
def record(rec, tag):
    entry = {{"tag": tag, "record": rec}}
    if isinstance(rec, dict):
        entry.update(tracking_id=rec.get("tracking_id"), export_id=rec.get("export_id"),
                     state=rec.get("state"), account=rec.get("account"))
    _r.rpush("{CALLBACK_KEY}", json.dumps(entry, default=repr))
'''


def wait_until(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A subprocess in its own session, its output in a log file; killed for sure at stop()."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        else:
            # the process group may still hold children (a worker's pool)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
        self.proc = Proc("redis", argv, dict(os.environ), workdir)
        self.client = redis.Redis.from_url(self.url)
        wait_until(self._ping, 20, "redis-server to answer PING")

    def _ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.proc.stop(grace=5)


# ---------------------------------------------------------------------------------------------
# The hostile provider


@dataclass
class Request:
    method: str
    path: str
    export_id: str
    headers: dict[str, str]
    body: bytes
    n: int  # 1 for the first request naming this export id


Behaviour = Callable[["Handler", Request], None]


def send_json(handler: Handler, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(obj).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


def trickle(handler: Handler, req: Request, every: float = 1.5, length: int = 4096) -> None:
    """A 200 whose body arrives one byte every `every` seconds: no single read ever times out."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(length))
    handler.end_headers()
    handler.wfile.flush()
    stop = handler.server.provider.stopping  # type: ignore[attr-defined]
    for _ in range(length):
        if stop.wait(every):
            return
        handler.wfile.write(b" ")
        handler.wfile.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        provider: FakeProvider = self.server.provider
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        export_id = provider.export_id(self.command, self.path, body)
        if export_id is None:
            send_json(self, 404, {"message": "no such route"})
            return
        n = provider.count(export_id)
        req = Request(self.command, self.path, export_id, dict(self.headers.items()), body, n)
        provider.log.append(req)
        with provider.lock:
            provider.inflight += 1
        try:
            behaviour = provider.script.get(export_id)
            if behaviour is None:
                send_json(self, 404, {"message": "Export not found"})
            elif not provider.auth_ok(req) and not getattr(behaviour, "ignore_auth", False):
                send_json(self, 401, {"message": "Missing or invalid API key"})
            else:
                behaviour(self, req)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with provider.lock:
                provider.inflight -= 1


class FakeProvider:
    """One account's provider: its own port, its own script of answers per export id."""

    def __init__(
        self, kind: str, *, token: str = "", username: str = "", password: str = ""
    ) -> None:
        self.kind, self.token, self.username, self.password = kind, token, username, password
        self.script: dict[str, Behaviour] = {}
        self.log: list[Request] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.inflight = 0
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.provider = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, export_id: str) -> int:
        with self.lock:
            self.counts[export_id] = self.counts.get(export_id, 0) + 1
            return self.counts[export_id]

    def polls(self, export_id: str) -> int:
        with self.lock:
            return self.counts.get(export_id, 0)

    def export_id(self, method: str, path: str, body: bytes) -> str | None:
        path = path.split("?", 1)[0]
        prefixes = {
            "cometly": ("GET", "/public-api/v1/events/exports/", ""),
            "biodatacatalyst": ("GET", "/v2/storage/exports/", ""),
            "saymon": ("GET", "/node/api/bulk/", "/status"),
        }
        want_method, prefix, suffix = prefixes[self.kind]
        if method != want_method or not path.startswith(prefix) or not path.endswith(suffix):
            return None
        segment = path[len(prefix) : len(path) - len(suffix)]
        return unquote(segment) if segment and "/" not in segment else None

    def auth_ok(self, req: Request) -> bool:
        headers = {k.lower(): v for k, v in req.headers.items()}
        if self.kind == "cometly":
            return headers.get("authorization") == f"Bearer {self.token}"
        if self.kind == "biodatacatalyst":
            return headers.get("x-sbg-auth-token") == self.token
        return headers.get("authorization") == basic_header(self.username, self.password)

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


# Cometly answers (docs.cometly.com, "Get export status")


def cometly_answer(export_id: str, status: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "export_id": int(export_id),
        "status": status,
        "created_at": "2024-01-15T10:30:00Z",
    }
    if status == "completed":
        body.update(
            completed_at="2024-01-15T10:33:42Z",
            download_url=f"https://bucket.s3.amazonaws.com/exports/{uuid.uuid4()}.json.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256",
            expires_at="2024-01-15T10:48:42Z",
        )
    elif status == "failed":
        body["message"] = "Export failed. Please try again in a few minutes."
    else:
        body["message"] = "Export is being processed. Please check back in a few minutes."
    body.update(extra)
    return body


def cometly_lifecycle(running_polls: int, final: str = "completed", **extra: Any) -> Behaviour:
    """`running_polls` answers of `processing`, then `final` (with `extra` fields) for good."""

    def behaviour(handler: Handler, req: Request) -> None:
        if req.n <= running_polls:
            send_json(handler, 200, cometly_answer(req.export_id, "processing"))
        else:
            send_json(handler, 200, cometly_answer(req.export_id, final, **extra))

    return behaviour


def fixed(code: int, body: Any, ignore_auth: bool = False) -> Behaviour:
    def behaviour(handler: Handler, req: Request) -> None:
        send_json(handler, code, body)

    behaviour.ignore_auth = ignore_auth  # type: ignore[attr-defined]
    return behaviour


# ---------------------------------------------------------------------------------------------
# Secrets in every form the issue names


def secret_forms(secret: str, username: str | None = None) -> dict[str, str]:
    forms = {
        "plain": secret,
        "url-encoded": quote(secret, safe=""),
        "url-encoded (plus)": quote_plus(secret),
        "base64": base64.b64encode(secret.encode()).decode(),
    }
    if username is not None:
        b64 = base64.b64encode(f"{username}:{secret}".encode()).decode()
        forms["base64 user:pass"] = b64
        forms["Basic header"] = f"Basic {b64}"
    else:
        forms["Bearer header"] = f"Bearer {secret}"
    return forms


def find_secrets(text: str, secrets: dict[str, dict[str, str]]) -> list[str]:
    """Names of every (secret, form) found in text."""
    found = []
    for name, forms in secrets.items():
        for form, value in forms.items():
            if value and value in text:
                found.append(f"{name} ({form})")
    return found


def _expand(value: Any, out: list[str], depth: int = 0) -> None:
    """Text of a Redis value, with JSON and kombu's base64 message bodies opened up."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    out.append(str(value))
    if depth > 6 or not isinstance(value, str):
        return
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return
    _walk(parsed, out, depth)


def _walk(obj: Any, out: list[str], depth: int) -> None:
    if isinstance(obj, dict):
        body = obj.get("body")
        props = obj.get("properties")
        if (
            isinstance(body, str)
            and isinstance(props, dict)
            and props.get("body_encoding") == "base64"
        ):
            with contextlib.suppress(ValueError):
                _expand(base64.b64decode(body), out, depth + 1)
        for v in obj.values():
            _walk(v, out, depth)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, out, depth)
    elif isinstance(obj, str):
        _expand(obj, out, depth + 1)


def _read(r: redis.Redis, key: bytes, kind: str) -> list[Any]:
    readers: dict[str, Callable[[], list[Any]]] = {
        "string": lambda: [r.get(key)],
        "hash": lambda: [x for kv in r.hgetall(key).items() for x in kv],
        "list": lambda: list(r.lrange(key, 0, -1)),
        "set": lambda: list(r.smembers(key)),
        "zset": lambda: [m for m, _ in r.zrange(key, 0, -1, withscores=True)],
        "stream": lambda: [str(e) for e in r.xrange(key)],
    }
    return readers.get(kind, lambda: [f"<{kind}>"])()


def redis_dump(client: redis.Redis, exclude: tuple[str, ...] = ()) -> str:
    """Every key and value of every database, read by its type, kombu message bodies decoded."""
    parts: list[str] = []
    info = client.info("keyspace")
    dbs = sorted(int(k[2:]) for k in info if k.startswith("db"))
    pool_kwargs = client.connection_pool.connection_kwargs
    for db in dbs or [0]:
        r = redis.Redis(host=pool_kwargs["host"], port=pool_kwargs["port"], db=db)
        for key in r.scan_iter(count=1000):
            name = key.decode("utf-8", "replace")
            if name in exclude:
                continue
            kind = r.type(key).decode()
            values = _read(r, key, kind)
            out: list[str] = [f"db{db} {kind} {name}"]
            _expand(name, out)
            for v in values:
                _expand(v, out)
            parts.append("\n".join(out))
        r.close()
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The fleet: env, worker(s), beat, CLI and API calls


@dataclass
class Account:
    name: str
    provider: FakeProvider
    extra: dict[str, str] = field(default_factory=dict)


class Fleet:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.appdir = workdir / "app"
        self.appdir.mkdir()
        (self.appdir / "hostile_callbacks.py").write_text(CALLBACK_MODULE)
        self.redis = RedisServer(workdir)
        self.r = redis.Redis.from_url(self.redis.url, decode_responses=True)
        self.procs: list[Proc] = []
        self.providers: list[FakeProvider] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "CELERY"))}
        base.pop("PYTHONPATH", None)
        self.env: dict[str, str] = {
            **base,
            "PYTHONPATH": str(self.appdir),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            "HOSTILE_REDIS_URL": self.redis.url,
            "POLLER_REDIS_URL": self.redis.url,
            "POLLER_BROKER_URL": self.redis.url,
            "POLLER_KEY_PREFIX": "hx",
            # fast polling and sweeping, short timeouts, a lease that bounds them
            "POLLER_BACKOFF_INITIAL": "1",
            "POLLER_BACKOFF_FACTOR": "1",
            "POLLER_BACKOFF_MAX": "1",
            "POLLER_BACKOFF_FLOOR": "0.5",
            "POLLER_SWEEP_INTERVAL": "1",
            "POLLER_RESCUE_GRACE": "3",
            "POLLER_HTTP_CONNECT_TIMEOUT": "2",
            "POLLER_HTTP_READ_TIMEOUT": "5",
            "POLLER_LEASE_SECONDS": "30",
            "POLLER_CONFIRM_REFUSALS": "2",
        }

    # accounts ----------------------------------------------------------------------------------

    def account(
        self, name: str, kind: str, *, token: str = "", username: str = "", password: str = ""
    ) -> FakeProvider:
        provider = FakeProvider(kind, token=token, username=username, password=password)
        self.providers.append(provider)
        prefix = f"POLLER_ACCOUNTS__{name.upper()}__"
        self.env[prefix + "PROVIDER"] = kind
        self.env[prefix + "BASE_URL"] = provider.url
        if token:
            self.env[prefix + "TOKEN"] = token
        if username:
            self.env[prefix + "USERNAME"] = username
            self.env[prefix + "PASSWORD"] = password
        return provider

    # processes ---------------------------------------------------------------------------------

    def worker(self, name: str = "poller", concurrency: int = 4, loglevel: str = "INFO") -> Proc:
        argv = [
            str(BIN / "celery"),
            "-A",
            "export_poller",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "-n",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "-I",
            "hostile_callbacks",
            "--without-gossip",
            "--without-mingle",
        ]
        proc = self._start(name, argv)
        wait_until(lambda: "ready." in proc.output() or not proc.alive(), 90, f"{name} to start")
        assert proc.alive(), f"{name} died at start:\n{proc.output()[-3000:]}"
        return proc

    def callback_worker(self, loglevel: str = "INFO") -> Proc:
        """A worker of 'your' application: consumes only the callback queue."""
        argv = [
            str(BIN / "celery"),
            "-A",
            "export_poller",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "2",
            "--loglevel",
            loglevel,
            "-Q",
            CALLBACK_QUEUE,
            "-n",
            f"callbacks-{uuid.uuid4().hex[:6]}@%h",
            "-I",
            "hostile_callbacks",
            "--without-gossip",
            "--without-mingle",
        ]
        proc = self._start("callbacks", argv)
        wait_until(lambda: "ready." in proc.output() or not proc.alive(), 90, "callback worker")
        assert proc.alive(), f"callback worker died at start:\n{proc.output()[-3000:]}"
        return proc

    def beat(self, loglevel: str = "INFO") -> Proc:
        argv = [
            str(BIN / "celery"),
            "-A",
            "export_poller",
            "beat",
            "--loglevel",
            loglevel,
            "--schedule",
            str(self.workdir / f"beat-schedule-{uuid.uuid4().hex[:6]}"),
        ]
        return self._start("beat", argv)

    def _start(self, name: str, argv: list[str]) -> Proc:
        taken = {p.name for p in self.procs}
        unique = name if name not in taken else f"{name}-{len(self.procs)}"
        proc = Proc(unique, argv, self.env, self.workdir)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.output()}" for p in self.procs if p.name != "redis")

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        for provider in self.providers:
            provider.stop()
        self.r.close()
        self.redis.client.close()
        self.redis.stop()

    # callers -----------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(BIN / "export-poller"), *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def api(self, code: str, timeout: float = 120) -> dict[str, dict[str, Any]]:
        """Run `code` in a fresh Python process with this fleet's environment.

        The code calls `call(label, fn, *args, **kwargs)`; each outcome is returned under its label:
        {"ok": result} or {"exc": type name, "documented": one of the README's ValueError subclasses
        from export_poller.providers.errors, "configuration_error", "invalid_export_id",
        "value_error", "msg"}.
        """
        script = PRELUDE + "\n" + code + "\n" + EPILOGUE
        path = self.workdir / f"api-{uuid.uuid4().hex[:8]}.py"
        path.write_text(script)
        done = subprocess.run(
            [sys.executable, str(path)],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        out = done.stdout.decode("utf-8", "replace")
        marker = out.rfind("@@RESULTS@@")
        assert marker >= 0, (
            f"api script failed (rc {done.returncode}):\n{done.stderr.decode()[-4000:]}"
        )
        return json.loads(out[marker + len("@@RESULTS@@") :])

    # callbacks ---------------------------------------------------------------------------------

    def callbacks(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(CALLBACK_KEY, 0, -1)]

    def callbacks_for(self, tracking_id: str) -> list[dict[str, Any]]:
        return [c for c in self.callbacks() if c.get("tracking_id") == tracking_id]


PRELUDE = """
import json, sys, traceback
from celery import signature
from export_poller import track_export, get_export, cancel_export
import export_poller.providers.errors as _errors

RESULTS = {}
_NAMES = ("ConfigurationError", "InvalidExportId", "UnknownProvider", "UnknownAccount")
_DOCUMENTED = tuple(getattr(_errors, n) for n in _NAMES if hasattr(_errors, n))
_CONFIG = getattr(_errors, "ConfigurationError", ())
_BAD_ID = getattr(_errors, "InvalidExportId", ())


def call(label, fn, *args, **kwargs):
    try:
        RESULTS[label] = {"ok": fn(*args, **kwargs)}
    except BaseException as exc:  # noqa: BLE001
        RESULTS[label] = {
            "exc": type(exc).__name__,
            "documented": isinstance(exc, _DOCUMENTED),
            "configuration_error": isinstance(exc, _CONFIG),
            "invalid_export_id": isinstance(exc, _BAD_ID),
            "value_error": isinstance(exc, ValueError),
            "msg": str(exc)[:2000],
        }


def cb(tag, **options):
    return signature("hostile.record", args=(tag,), queue="hostile-cb", **options)
"""

EPILOGUE = """
sys.stdout.write("@@RESULTS@@" + json.dumps(RESULTS, default=repr, ensure_ascii=True))
sys.stdout.flush()
"""


def fleet_in(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.stop()
