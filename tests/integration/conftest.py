"""A real private redis-server, the simulator over real HTTP, and real worker/beat subprocesses.

The broker is the private Redis by default; `POLLER_TEST_BROKER=rabbitmq` runs the same tests
with RabbitMQ as the broker (Redis stays the store): a private vhost on the RabbitMQ at
`POLLER_TEST_AMQP_URL` (default amqp://guest:guest@127.0.0.1:5672), created with rabbitmqctl
for the session and deleted after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import signature

from export_poller.demo import fast_env
from export_poller.processes import (
    DEFAULT_AMQP_URL,
    Child,
    rabbitmq_vhost,
    start_beat,
    start_redis,
    start_worker,
    wait_until,
)
from export_poller.providers.simulator.client import SimulatorClient
from export_poller.providers.simulator.server import start_in_thread

PREFIX = "it"
BROKER = os.environ.get("POLLER_TEST_BROKER", "redis").strip().lower()
if BROKER not in ("redis", "rabbitmq"):
    raise pytest.UsageError(f"POLLER_TEST_BROKER must be redis or rabbitmq, not {BROKER!r}")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("integration")


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[Child]:
    child = start_redis(workdir, appendonly=True)
    yield child
    child.stop()


@pytest.fixture(scope="session")
def broker_url(redis_server: Child) -> Iterator[str]:
    """The broker every worker, beat and this process use in a test that takes `env`."""
    if BROKER == "redis":
        yield redis_server.extra["url"]
        return
    with rabbitmq_vhost(os.environ.get("POLLER_TEST_AMQP_URL", DEFAULT_AMQP_URL)) as url:
        yield url


@pytest.fixture(scope="session")
def sim() -> Iterator[Any]:
    running = start_in_thread(port=0)
    yield running
    running.stop()


@pytest.fixture
def sim_client(sim: Any) -> SimulatorClient:
    client = SimulatorClient(sim.url)
    client.reset()
    return client


@pytest.fixture
def env(
    redis_server: Child, broker_url: str, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Point this process and its children at the private Redis, the broker and the simulator."""
    url = redis_server.extra["url"]
    r = redis.Redis.from_url(url)
    r.flushall()
    settings = fast_env(url, sim.url, prefix=PREFIX) | {"POLLER_BROKER_URL": broker_url}
    if BROKER == "rabbitmq":
        purge(broker_url)  # a message a previous test's workers left behind is not this test's
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    from export_poller.runtime import reconfigure

    reconfigure()
    yield {**os.environ, **settings}
    reconfigure()


def purge(url: str) -> None:
    from kombu import Connection

    with Connection(url) as conn, contextlib.suppress(*conn.channel_errors):
        conn.default_channel.queue_purge("export-poller")  # not declared yet: nothing to purge


class Fleet:
    """Workers and beat for one test; stopped (and checked for tracebacks) at teardown."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.children: list[Child] = []
        self.r = redis.Redis.from_url(env["POLLER_REDIS_URL"], decode_responses=True)

    def worker(self, name: str = "worker", concurrency: int = 2, loglevel: str = "INFO") -> Child:
        child = start_worker(
            self.env, self.workdir, name=name, concurrency=concurrency, loglevel=loglevel
        )
        self.children.append(child)
        wait_until(lambda: "ready" in child.output(), 60, f"{name} to start")
        return child

    def beat(self, name: str = "beat") -> Child:
        child = start_beat(self.env, self.workdir, name=name)
        self.children.append(child)
        return child

    def callbacks(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(f"{PREFIX}:callbacks", 0, -1)]

    def wait_for_callbacks(self, count: int, timeout: float = 90) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.callbacks()) >= count, timeout, f"{count} callbacks")
        return self.callbacks()

    def stop(self) -> None:
        for child in self.children:
            child.stop()


@pytest.fixture
def fleet(env: dict[str, str], workdir: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    run_dir = workdir / request.node.name[:60]
    run_dir.mkdir(exist_ok=True)
    fleet = Fleet(env, run_dir)
    yield fleet
    fleet.stop()


def callback_sigs() -> dict[str, Any]:
    return {
        "on_complete": signature("exports.record_callback", args=("on_complete",)),
        "on_failure": signature("exports.record_callback", args=("on_failure",)),
    }


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    wait_until(check, timeout, what, interval=0.1)


def monotonic() -> float:
    return time.monotonic()


def override(fleet: Fleet, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str]) -> None:
    """Change settings for this test's children and for this process, before workers start."""
    from export_poller.runtime import reconfigure

    fleet.env.update(settings)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    reconfigure()


def redis_dump(r: redis.Redis) -> str:
    """Every key and value in Redis as text, to search for what must never be stored."""
    parts: list[str] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        readers = {
            "string": lambda k: [r.get(k)],
            "hash": lambda k: list(r.hgetall(k).items()),
            "list": lambda k: r.lrange(k, 0, -1),
            "set": lambda k: list(r.smembers(k)),
            "zset": lambda k: r.zrange(k, 0, -1),
        }
        parts.append(f"{key!r} {readers.get(kind, lambda k: [])(key)!r}")
    return "\n".join(parts)
