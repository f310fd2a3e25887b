"""Harness for the independent acceptance tests of issue 11, written from the README alone.

(Kept out of conftest.py, which other independent suites share; the fixtures live in the
test module.)

It starts a private ``redis-server``, real ``celery -A export_poller worker --pool threads``
processes and ``celery -A export_poller beat`` (cwd: a temporary directory), configured through
the documented ``POLLER_*`` environment variables, against a fake provider written from the
providers' public API documents (Seven Bridges CGC bulk exports, BioData Catalyst exports,
Cometly event exports). Callbacks are Celery tasks of a small module of our own (``-I``) that
record every invocation in Redis, so a test can count them per export.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import pytest
import redis

VENV_BIN = Path(sys.executable).parent
CELERY = str(VENV_BIN / "celery")
EXPORT_POLLER = str(VENV_BIN / "export-poller")

CALLBACK_LIST = "indep:callbacks"

# ---------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float, message: str, interval: float = 0.2) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s: {message}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# the fake provider


@dataclass
class Answer:
    status: int
    body: Any  # a JSON-able object, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    t: float  # arrival (time.time())
    token: str
    api: str  # "cgc" | "sb" | "cometly"
    ids: list[str]
    status: int = 0
    t_answer: float = 0.0  # just before the answer was written
    not_before: float | None = None  # the time a 429 told the client to wait for


# A limiter decides, per request and under the provider's lock, whether the account may be
# answered. It returns (None, headers) to let the request through with extra headers, or
# (answer, None) to refuse it; it may set ``req.not_before`` on a refusal.
Limiter = Callable[[Request], tuple[Answer | None, dict[str, str] | None]]


def sb_error(status: int, code: int, message: str) -> dict[str, Any]:
    """The Seven Bridges error body: {status, code, message, more_info}."""
    return {
        "status": status,
        "code": code,
        "message": message,
        "more_info": f"https://docs.sevenbridges.com/docs/api-status-codes#{code}",
    }


class FakeProvider:
    """Seven Bridges (CGC bulk + single export) and Cometly status APIs on one HTTP server.

    Each export id answers "pending" on its first successful answer, "running" until it has
    had ``running`` successful answers, then its final state. Accounts are told apart by token.
    """

    SB_STATE: ClassVar[dict[str, str]] = {
        "pending": "PENDING",
        "running": "RUNNING",
        "completed": "COMPLETED",
        "failed": "FAILED",
    }
    COMETLY_STATE: ClassVar[dict[str, str]] = {
        "pending": "queued",
        "running": "processing",
        "completed": "completed",
        "failed": "failed",
    }

    def __init__(self, tokens: set[str]) -> None:
        self.tokens = set(tokens)
        self.lock = threading.Lock()
        self.log: list[Request] = []
        self.answered: Counter[str] = Counter()  # successful answers per export id
        self.running: dict[str, int] = {}  # per id; default below
        self.final: dict[str, str] = {}
        self.default_running = 2
        self.poison: dict[str, str] = {}  # CGC id -> "400" | "500" | "garbage"
        self.limiter: Limiter | None = None
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._dispatch(self)

            def do_POST(self) -> None:
                fake._dispatch(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeProvider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # -- inspection -------------------------------------------------------------------------

    def requests(self, token: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.log if token is None or r.token == token]

    # -- the HTTP side ----------------------------------------------------------------------

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        t = time.time()
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        path = h.path.split("?", 1)[0]
        if h.command == "POST" and path == "/v2/bulk/storage/exports/get":
            api, token = "cgc", h.headers.get("X-SBG-Auth-Token", "")
            try:
                ids = [str(i) for i in json.loads(raw or b"{}")["export_ids"]]
            except (ValueError, KeyError, TypeError):
                self._write(h, Answer(400, sb_error(400, 9000, "Bad request body")))
                return
        elif h.command == "GET" and path.startswith("/v2/storage/exports/"):
            api, token = "sb", h.headers.get("X-SBG-Auth-Token", "")
            ids = [unquote(path[len("/v2/storage/exports/") :])]
        elif h.command == "GET" and path.startswith("/public-api/v1/events/exports/"):
            api = "cometly"
            auth = h.headers.get("Authorization", "")
            token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
            ids = [unquote(path[len("/public-api/v1/events/exports/") :])]
        else:
            self._write(h, Answer(404, {"message": "no such path"}))
            return
        req = Request(t=t, token=token, api=api, ids=ids)
        with self.lock:
            answer = self._answer(req)
            req.status = answer.status
            req.t_answer = time.time()
            self.log.append(req)
        self._write(h, answer)

    def _write(self, h: BaseHTTPRequestHandler, answer: Answer) -> None:
        if isinstance(answer.body, bytes):
            data, ctype = answer.body, "text/html"
        else:
            data, ctype = json.dumps(answer.body).encode(), "application/json"
        try:
            h.send_response(answer.status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in answer.headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass  # the client went away; its request is logged all the same

    def _answer(self, req: Request) -> Answer:
        if req.token not in self.tokens:
            if req.api == "cometly":
                return Answer(401, {"message": "Missing or invalid API key"})
            return Answer(401, sb_error(401, 0, "Unauthorized"))
        extra: dict[str, str] = {}
        if self.limiter is not None:
            refusal, headers = self.limiter(req)
            if refusal is not None:
                return refusal
            extra = headers or {}
        if req.api == "cgc":
            bad = [self.poison[i] for i in req.ids if i in self.poison]
            if bad:
                return self._poisoned(bad[0], extra)
            items = [{"resource": self._sb_resource(i, self._advance(i))} for i in req.ids]
            return Answer(200, {"items": items}, extra)
        state = self._advance(req.ids[0])
        if req.api == "sb":
            return Answer(200, self._sb_resource(req.ids[0], state), extra)
        return Answer(200, self._cometly(req.ids[0], state), extra)

    def _poisoned(self, mode: str, extra: dict[str, str]) -> Answer:
        if mode == "400":
            return Answer(400, sb_error(400, 9000, "Invalid export id in request"), extra)
        if mode == "500":
            return Answer(500, sb_error(500, 0, "Internal server error"), extra)
        return Answer(200, b"<html><body>Bad gateway, try again</body></html>", extra)

    def _advance(self, export_id: str) -> str:
        n = self.answered[export_id]
        self.answered[export_id] += 1
        if n == 0:
            return "pending"
        if n < self.running.get(export_id, self.default_running):
            return "running"
        return self.final.get(export_id, "completed")

    def _sb_resource(self, export_id: str, state: str) -> dict[str, Any]:
        res: dict[str, Any] = {
            "href": f"{self.base_url}/v2/storage/exports/{export_id}",
            "id": export_id,
            "state": self.SB_STATE[state],
            "overwrite": False,
            "source": {"file": "567890abc9b0307bc0414164"},
            "destination": {"volume": "rfranklin/output", "location": f"{export_id}.vcf"},
            "started_on": "2016-06-15T19:17:39Z",
            "properties": {"sse_algorithm": "AES256", "aws_storage_class": "STANDARD"},
        }
        if state in ("completed", "failed"):
            res["finished_on"] = "2016-06-15T19:17:41Z"
        if state == "completed":
            res["result"] = {
                "href": f"{self.base_url}/v2/files/568e69abe9b0307bc0419876",
                "id": "568e69abe9b0307bc0419876",
                "name": f"{export_id}.vcf",
            }
        if state == "failed":
            res["error"] = sb_error(409, 9107, "Location on volume already contains a file.")
        return res

    def _cometly(self, export_id: str, state: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "export_id": int(export_id),
            "status": self.COMETLY_STATE[state],
            "created_at": "2024-01-15T10:30:00Z",
        }
        if state == "completed":
            body["completed_at"] = "2024-01-15T10:33:42Z"
            body["download_url"] = f"https://bucket.s3.amazonaws.com/exports/{export_id}.json.gz"
            body["expires_at"] = "2024-01-15T10:48:42Z"
        else:
            body["message"] = "Export is being processed. Please check back in a few minutes."
        return body


def retry_after_seconds(not_before: float, now: float) -> str:
    return str(max(1, math.ceil(not_before - now)))


# ---------------------------------------------------------------------------------------------
# the fleet: redis-server, celery workers and beat

CALLBACK_MODULE = '''
"""Callbacks for the independent tests: record every invocation in Redis."""
import json
import os
import time

import redis
from celery import shared_task

_R = redis.Redis.from_url(os.environ["INDEP_CALLBACK_REDIS"])


def _record(kind, record):
    record = record if isinstance(record, dict) else {"raw": repr(record)}
    _R.rpush(
        "indep:callbacks",
        json.dumps(
            {
                "kind": kind,
                "tracking_id": record.get("tracking_id"),
                "export_id": record.get("export_id"),
                "account": record.get("account"),
                "state": record.get("state"),
                "error": record.get("error"),
                "t": time.time(),
            },
            default=str,
        ),
    )


@shared_task(name="indep_callbacks.on_complete")
def on_complete(record, *args, **kwargs):
    _record("on_complete", record)


@shared_task(name="indep_callbacks.on_failure")
def on_failure(record, *args, **kwargs):
    _record("on_failure", record)
'''

TRACK_SCRIPT = '''
"""Track exports as a client would: python indep_track.py < spec.json"""
import json
import sys

out = {"import_error": None, "results": []}
try:
    from celery import signature
    from export_poller import track_export
except Exception as exc:  # noqa: BLE001
    out["import_error"] = f"{type(exc).__name__}: {exc}"
    print("INDEP-RESULT " + json.dumps(out))
    sys.exit(0)
for item in json.load(sys.stdin):
    try:
        tid = track_export(
            item["provider"],
            item["export_id"],
            account=item.get("account"),
            on_complete=signature("indep_callbacks.on_complete"),
            on_failure=signature("indep_callbacks.on_failure"),
            timeout=item.get("timeout"),
        )
        out["results"].append({"ok": True, "tid": tid})
    except Exception as exc:  # noqa: BLE001
        out["results"].append(
            {
                "ok": False,
                "type": type(exc).__name__,
                "mro": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc),
            }
        )
print("INDEP-RESULT " + json.dumps(out))
'''

GET_SCRIPT = '''
"""Print get_export(tid) for every tracking id given on stdin."""
import json
import sys

from export_poller import get_export

out = {}
for tid in json.load(sys.stdin):
    out[tid] = get_export(tid)
print("INDEP-RESULT " + json.dumps(out, default=str))
'''


def _result_line(stdout: str) -> Any:
    for line in stdout.splitlines():
        if line.startswith("INDEP-RESULT "):
            return json.loads(line[len("INDEP-RESULT ") :])
    raise AssertionError(f"helper printed no result; output:\n{stdout[-3000:]}")


class Fleet:
    """One private Redis plus the worker/beat processes started by a test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.app_dir = root / "app"
        self.app_dir.mkdir()
        (self.app_dir / "indep_callbacks.py").write_text(CALLBACK_MODULE)
        (self.app_dir / "indep_track.py").write_text(TRACK_SCRIPT)
        (self.app_dir / "indep_get.py").write_text(GET_SCRIPT)
        self.run_dir = root / "run"
        self.run_dir.mkdir()
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.settings: dict[str, str] = {}
        self._spawn(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            env=dict(os.environ),
        )
        self.redis = redis.Redis.from_url(self.redis_url)
        self.callback_redis = redis.Redis.from_url(self.callback_url)
        wait_for(self._redis_up, 20, "redis-server did not answer PING")

    @property
    def callback_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/1"

    def _redis_up(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def configure(
        self, accounts: dict[str, dict[str, str]], settings: dict[str, str] | None = None
    ) -> None:
        """Accounts as {name: {"PROVIDER": ..., "TOKEN": ..., ...}}; other POLLER_* settings."""
        env: dict[str, str] = {}
        for name, values in accounts.items():
            for key, value in values.items():
                env[f"POLLER_ACCOUNTS__{name.upper()}__{key.upper()}"] = value
        env.update(settings or {})
        self.settings = env

    def env(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("POLLER_", "CELERY_", "PYTEST_"))
            and k.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
        }
        base.update(
            {
                "POLLER_REDIS_URL": self.redis_url,
                "POLLER_BROKER_URL": self.redis_url,
                "INDEP_CALLBACK_REDIS": self.callback_url,
                "PYTHONPATH": str(self.app_dir),
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
                "PYTHONUNBUFFERED": "1",
            }
        )
        base.update(self.settings)
        return base

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Path:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.run_dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc, log))
        return log

    def start_workers(self, n: int = 1, concurrency: int = 4) -> None:
        logs = []
        for i in range(1, n + 1):
            argv = [CELERY, "-A", "export_poller", "worker", "--pool", "threads"]
            argv += ["--concurrency", str(concurrency), "-n", f"indep{i}@%h"]
            argv += ["--loglevel", "INFO", "-I", "indep_callbacks"]
            argv += ["--without-gossip", "--without-mingle"]
            logs.append(self._spawn(f"worker{i}", argv, self.env()))
        for log in logs:
            wait_for(
                lambda log=log: b" ready." in log.read_bytes() or self._died(),
                90,
                f"worker never became ready; see {log}",
                interval=0.3,
            )
            if self._died():
                pytest.fail(f"a process died at start-up:\n{self.tails()}")

    def start_beat(self) -> None:
        argv = [CELERY, "-A", "export_poller", "beat", "--loglevel", "INFO"]
        argv += ["--schedule", str(self.root / "beat-schedule")]
        self._spawn("beat", argv, self.env())

    def _died(self) -> bool:
        return any(p.poll() is not None for _, p, _ in self.procs)

    def _helper(self, script: str, payload: Any) -> Any:
        proc = subprocess.run(
            [sys.executable, str(self.app_dir / script)],
            input=json.dumps(payload).encode(),
            cwd=self.run_dir,
            env=self.env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        return _result_line(out + "\n" + err)

    def track(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Call track_export for each item in a client process; results in order."""
        return dict(self._helper("indep_track.py", items))

    def track_ok(self, items: list[dict[str, Any]]) -> list[str]:
        out = self.track(items)
        assert out["import_error"] is None, out
        bad = [r for r in out["results"] if not r["ok"]]
        assert not bad, f"track_export refused: {bad}"
        return [r["tid"] for r in out["results"]]

    def records(self, tids: list[str]) -> dict[str, Any]:
        return dict(self._helper("indep_get.py", tids))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXPORT_POLLER, *args],
            cwd=self.run_dir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def callbacks(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.callback_redis.lrange(CALLBACK_LIST, 0, -1)]

    def tails(self, lines: int = 40) -> str:
        parts = []
        for name, _, log in self.procs:
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"----- {name} ({log}) -----\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc, _ in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.redis.close()
        self.callback_redis.close()
