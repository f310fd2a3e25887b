"""Engine fixtures: fakeredis for the store, a scripted provider, a fake broker, a fake clock."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest

from export_poller import clock
from export_poller.config.settings import AccountSettings, Settings
from export_poller.engine import Engine
from export_poller.heartbeat import served_accounts
from export_poller.providers import errors
from export_poller.providers.answer import Answer, Budget
from export_poller.providers.models import ExportStatus
from export_poller.store import Store
from export_poller.store.fleet import Fleet, Worker


class Clock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class ScriptedProvider:
    """Answers from a per-export script; the last answer repeats once the script runs out."""

    name = "scripted"
    batch_size = 1

    def __init__(self) -> None:
        self.scripts: dict[str, list[ExportStatus | errors.ProviderError]] = {}
        self.calls: list[str] = []
        self.budget: Budget | None = None  # what every answer says about the account's budget

    def script(self, export_id: str, *answers: str | errors.ProviderError) -> None:
        self.scripts[export_id] = [
            ExportStatus(state=a) if isinstance(a, str) else a  # type: ignore[arg-type]
            for a in answers
        ]

    def fetch(self, export_id: str) -> ExportStatus | errors.ProviderError:
        self.calls.append(export_id)
        script = self.scripts.get(export_id) or [ExportStatus(state="running")]
        return script.pop(0) if len(script) > 1 else script[0]

    def fetch_many(self, export_ids: list[str]) -> dict[str, ExportStatus | errors.ProviderError]:
        return {export_id: self.fetch(export_id) for export_id in export_ids}

    def ask(self, export_ids: list[str]) -> Answer:
        """As the real adapter: a whole-request error and the stated budget on the answer."""
        try:
            return Answer(self.fetch_many(export_ids), None, self.budget)
        except errors.ProviderError as exc:
            return Answer(dict.fromkeys(export_ids, exc), exc, self.budget)


class FakePool:
    def __init__(self, provider: ScriptedProvider) -> None:
        self.provider = provider

    def get(self, account: str) -> ScriptedProvider:
        return self.provider


@dataclass
class Broker:
    """Records what the engine would have sent to Celery, so tests deliver messages by hand."""

    messages: list[tuple[list[tuple[str, str]], float]] = field(default_factory=list)
    account_of: dict[str, str] = field(default_factory=dict)  # the account a message named
    callbacks: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    fail_callbacks: int = 0

    def send_poll(self, account: str, pairs: Sequence[tuple[str, str]], countdown: float) -> None:
        self.messages.append((list(pairs), countdown))
        self.account_of |= dict.fromkeys((tid for tid, _ in pairs), account)

    @property
    def polls(self) -> list[tuple[str, str, float]]:
        """Every export a pending message names, as (tid, token, countdown)."""
        return [
            (tid, token, countdown) for pairs, countdown in self.messages for tid, token in pairs
        ]

    def send_callback(self, sig: dict[str, Any], record: dict[str, Any]) -> None:
        if self.fail_callbacks:
            self.fail_callbacks -= 1
            raise ConnectionError("broker down")
        self.callbacks.append((sig, record))

    def take_polls(self) -> list[tuple[str, str, float]]:
        taken = self.polls
        self.messages = []
        return taken

    def take_messages(self) -> list[tuple[list[tuple[str, str]], float]]:
        taken, self.messages = self.messages, []
        return taken


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        accounts={"scripted": AccountSettings(provider="scripted")},
        backoff_initial=5,
        backoff_factor=2,
        backoff_max=300,
        rescue_grace=30,
        enqueue_horizon=60,
        backlog_max=10_000,  # the bound has its own tests (test_fair_share.py)
    )


@pytest.fixture
def redis_client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.flushall()


@pytest.fixture
def store(redis_client: fakeredis.FakeRedis) -> Store:
    return Store(redis_client, "test")


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def engine(
    settings: Settings, store: Store, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> Engine:
    return Engine(
        settings,
        store,
        broker.send_poll,
        broker.send_callback,
        providers=FakePool(provider),  # type: ignore[arg-type]
        rand=lambda: 1.0,
    )


def serve(engine: Engine, settings: Settings, name: str = "worker@test") -> None:
    """Put a worker serving `settings`' accounts in the roster, as its heartbeat would: the
    roster, not the caller's settings, is what `track_export` asks."""
    worker = Worker(name, served_accounts(settings), "test-host", 1, clock.now())
    Fleet(engine.store.r, engine.store.keys).heartbeat(worker, ttl=60)
