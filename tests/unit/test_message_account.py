"""A poll message names its account: the claim takes only that account's exports, and a message
sent before messages named their account (still in a broker at upgrade) still polls."""

from __future__ import annotations

import logging

import pytest

from export_poller.engine import Engine
from export_poller.store import Store
from tests.unit.conftest import Broker, ScriptedProvider


def track(engine: Engine, export_id: str, account: str = "scripted") -> str:
    fields = {"provider": "scripted", "account": account, "export_id": export_id}
    return engine.track(fields, 3600)


def test_a_message_naming_another_accounts_export_does_not_claim_it(
    engine: Engine,
    store: Store,
    broker: Broker,
    provider: ScriptedProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tid = track(engine, "e1")
    [(_, token, _)] = broker.take_polls()
    before = store.get(tid)
    with caplog.at_level(logging.WARNING, logger="export_poller.poll"):
        assert engine.poll(tid, token, account="someone-else") == "misrouted"
    assert provider.calls == []
    assert store.get(tid) == before  # no lease, no attempt: nothing written for it
    assert any(
        r.levelno == logging.WARNING and "misrouted" in r.getMessage() for r in caplog.records
    )
    assert engine.poll(tid, token, account="scripted") == "running"  # its own account's message
    assert provider.calls == ["e1"]


def test_a_message_without_an_account_still_polls(
    engine: Engine, store: Store, broker: Broker, provider: ScriptedProvider
) -> None:
    tid = track(engine, "e1")
    [(_, token, _)] = broker.take_polls()
    assert engine.poll(tid, token) == "running"  # as a message sent before the upgrade
    assert provider.calls == ["e1"]
    [(follow, _, _)] = broker.take_polls()
    assert follow == tid and broker.account_of[tid] == "scripted"  # and its follow-up names it
    assert engine.poll("gone", "token") == "missing"
