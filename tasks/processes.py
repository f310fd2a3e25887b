"""Starting and stopping the moving parts (a private Redis, a worker, beat) as child processes.

The demo and the integration tests use the same code, so what the tests prove is what a user
runs. Every child gets its own process group and is killed with it: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks stop every child we started."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll a condition with a deadline: the one way this project waits for another process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def redis_ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@dataclass
class Child:
    """A child process in its own group, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(5)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def spawn(name: str, argv: list[str], env: Mapping[str, str], workdir: Path) -> Child:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argv is built here, never from user input
            argv,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Child(name, proc, log_path)


def start_redis(
    workdir: Path,
    *,
    appendonly: bool = False,
    port: int | None = None,
    requirepass: str | None = None,
) -> Child:
    """A private redis-server on a free loopback port (no persistence unless asked)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed; set POLLER_REDIS_URL to a reachable Redis"
        )
    port = port or free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
        str(workdir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--maxmemory-policy",
        "noeviction",
    ]
    if requirepass:
        argv += ["--requirepass", requirepass]
    child = spawn(f"redis-{port}", argv, os.environ, workdir)
    auth = f":{requirepass}@" if requirepass else ""
    url = f"redis://{auth}127.0.0.1:{port}/0"
    child.extra["url"] = url
    wait_until(lambda: redis_ping(url), 10, f"redis-server on port {port}")
    return child


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "export_poller", *args]


def stand_in(env: Mapping[str, str], ttl: float = 300) -> None:
    """A roster entry for the accounts `env` configures, as the worker started later will
    publish: for a bench or test that tracks before any worker runs (so that a first train
    takes every export). `track_export` refuses an account no live worker serves."""
    from export_poller.store.fleet import Fleet, Worker
    from export_poller.store.keys import Keys

    head, tail = "POLLER_ACCOUNTS__", "__PROVIDER"
    accounts = {
        key[len(head) : -len(tail)].lower(): value.strip().lower()
        for key, value in env.items()
        if key.startswith(head) and key.endswith(tail)
    }
    client = redis.Redis.from_url(env["POLLER_REDIS_URL"])
    worker = Worker("stand-in@" + socket.gethostname(), accounts, "bench", os.getpid(), time.time())
    Fleet(client, Keys(env.get("POLLER_KEY_PREFIX", "ep"))).heartbeat(worker, ttl)
    client.close()


def start_worker(
    env: Mapping[str, str],
    workdir: Path,
    *,
    name: str = "worker",
    concurrency: int = 8,
    pool: str = "threads",
    loglevel: str = "INFO",
) -> Child:
    """A worker as deployed: a thread pool, since a poll spends its time waiting on HTTP."""
    argv = celery_argv(
        "worker",
        "--loglevel",
        loglevel,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    )
    return spawn(name, argv, env, workdir)


def start_beat(env: Mapping[str, str], workdir: Path, *, name: str = "beat") -> Child:
    schedule = Path(tempfile.mkdtemp(dir=workdir)) / "beat-schedule"
    argv = celery_argv("beat", "--loglevel", "INFO", "--schedule", str(schedule))
    return spawn(name, argv, env, workdir)


DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672"


def rabbitmq_ready(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # any failure means "not reachable"; the caller says why
        return False


def _rabbitmqctl(*args: str) -> None:
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise RuntimeError("rabbitmqctl is not installed; install rabbitmq-server")
    subprocess.run(  # noqa: S603 - argv is built here, never from user input
        [binary, "-q", *args], check=True, capture_output=True, timeout=60
    )


@contextlib.contextmanager
def rabbitmq_vhost(base_url: str = DEFAULT_AMQP_URL) -> Iterator[str]:
    """A private vhost on the machine's RabbitMQ for one run, deleted afterwards: runs that
    share the server (tests of several engineers, a soak) never see each other's queues."""
    base = base_url.rstrip("/")
    user = urlsplit(base).username or "guest"
    vhost = f"export-poller-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        url = f"{base}/{vhost}"
        wait_until(lambda: rabbitmq_ready(url), 30, f"RabbitMQ vhost {vhost}")
        yield url
    finally:
        _rabbitmqctl("delete_vhost", vhost)
