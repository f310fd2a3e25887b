"""`track_export` is the boundary: bad input gets a clear error and nothing is stored."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery import signature

from export_poller import api, heartbeat
from export_poller.celery import app
from export_poller.config.settings import AccountSettings, Settings
from export_poller.engine import Engine
from export_poller.heartbeat import check_accounts
from export_poller.providers import errors
from export_poller.store.fleet import Fleet
from tests.unit.conftest import Broker, serve


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, engine: Engine, broker: Broker) -> Broker:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        accounts={
            "cometly": AccountSettings(provider="cometly", token="t0k3n-secret"),
            "acme-cgc": AccountSettings(provider="cgc", token="other-secret"),
        },
    )
    monkeypatch.setattr(api, "get_settings", lambda: settings)
    monkeypatch.setattr(api, "get_engine", lambda: engine)
    serve(engine, settings)
    return broker


def test_tracks_with_the_provider_name_as_default_account(wired: Broker, engine: Engine) -> None:
    tid = api.track_export(
        "cometly", "123", on_complete=signature("myapp.export_ready"), metadata={"a": 1}
    )
    record = engine.get(tid)
    assert record and record["account"] == "cometly" and record["metadata"] == {"a": 1}
    assert wired.polls == [(tid, wired.polls[0][1], 0.0)]


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: api.track_export("comety", "1"), errors.UnknownProvider, "did you mean 'cometly'"),
        (lambda: api.track_export("cgc", "x"), errors.UnknownAccount, "POLLER_ACCOUNTS__CGC__"),
        (
            lambda: api.track_export("cgc", "x", account="acme-cgcc"),
            errors.UnknownAccount,
            "did you mean 'acme-cgc'",
        ),
        (
            lambda: api.track_export("cometly", "1", account="acme-cgc"),
            errors.ConfigurationError,
            "is a cgc account",
        ),
        (lambda: api.track_export("cometly", ""), errors.InvalidExportId, "empty"),
        (lambda: api.track_export("cometly", "abc"), errors.InvalidExportId, "must match"),
        (
            lambda: api.track_export("cgc", "a\nb", account="acme-cgc"),
            errors.InvalidExportId,
            "control",
        ),
        (
            lambda: api.track_export("cgc", "x" * 1025, account="acme-cgc"),
            errors.InvalidExportId,
            "1024",
        ),
        (lambda: api.track_export("cometly", 123), errors.InvalidExportId, "string"),
        (
            lambda: api.track_export("cometly", "1", on_complete="myapp.done"),
            errors.ConfigurationError,
            "Celery signature",
        ),
        (
            lambda: api.track_export("cometly", "1", metadata={"when": object()}),
            errors.ConfigurationError,
            "JSON",
        ),
        (
            lambda: api.track_export("cometly", "1", metadata=["a"]),
            errors.ConfigurationError,
            "JSON object",
        ),
        (
            lambda: api.track_export("cometly", "1", timeout=-5),
            errors.ConfigurationError,
            "timeout",
        ),
        (
            lambda: api.track_export("cometly", "1", timeout=float("nan")),
            errors.ConfigurationError,
            "timeout",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_is_stored(
    wired: Broker, engine: Engine, call: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(")):
        call()
    assert wired.polls == []
    assert list(engine.store.iter_ids()) == []


def test_unknown_tracking_ids_are_none_not_errors(wired: Broker) -> None:
    assert api.get_export("nope") is None
    assert api.get_export("../../etc") is None
    assert api.cancel_export("nope") is False


@pytest.mark.parametrize(
    ("account", "setting"),
    [
        (AccountSettings(provider="cometly"), "POLLER_ACCOUNTS__SPACE__TOKEN"),
        (AccountSettings(provider="saymon", username="u", password="p"), "__BASE_URL"),
        (
            AccountSettings(provider="saymon", base_url="https://s.example", username="u"),
            "POLLER_ACCOUNTS__SPACE__PASSWORD",
        ),
        (
            AccountSettings(provider="chaossearch", base_url="https://c.example", access_key="a"),
            "POLLER_ACCOUNTS__SPACE__SECRET_KEY",
        ),
        (AccountSettings(provider="cgc"), "POLLER_ACCOUNTS__SPACE__TOKEN"),
    ],
)
def test_a_worker_with_an_account_missing_a_required_setting_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, account: AccountSettings, setting: str
) -> None:
    """Credentials live on the workers, so they are checked there, before any work."""
    settings = Settings(_env_file=None, accounts={"space": account})  # type: ignore[call-arg]
    monkeypatch.setattr(heartbeat, "get_settings", lambda: settings)
    with pytest.raises(errors.ConfigurationError, match=setting):
        check_accounts(settings)
    with pytest.raises(SystemExit, match=setting):
        heartbeat._on_init(sender=SimpleNamespace(app=app))


def test_a_process_with_no_account_settings_tracks_what_a_live_worker_serves(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, broker: Broker
) -> None:
    bare = Settings(_env_file=None)  # type: ignore[call-arg]
    assert bare.accounts == {}
    monkeypatch.setattr(api, "get_settings", lambda: bare)
    monkeypatch.setattr(api, "get_engine", lambda: engine)
    worker = Settings(
        _env_file=None,  # type: ignore[call-arg]
        accounts={"space": AccountSettings(provider="cgc", token="worker-only-secret")},
    )
    serve(engine, worker)
    tid = api.track_export("cgc", "x1", account="space")
    assert (api.get_export(tid) or {})["account"] == "space"
    assert api.cancel_export(tid) is True
    assert "worker-only-secret" not in repr(engine.store.r.keys("*"))


def test_an_account_no_live_worker_serves_is_refused_by_name_with_what_they_serve(
    wired: Broker, engine: Engine
) -> None:
    with pytest.raises(errors.UnknownAccount) as caught:
        api.track_export("cometly", "1", account="cometlyy")
    assert str(caught.value) == (
        "unknown account 'cometlyy'; did you mean 'cometly'? no live worker serves it (the "
        "live workers serve acme-cgc (cgc), cometly (cometly)); configure it on the workers "
        "with POLLER_ACCOUNTS__COMETLYY__PROVIDER=cometly and its credentials"
    )
    assert wired.polls == [] and list(engine.store.iter_ids()) == []


def test_with_no_live_worker_every_account_is_refused_at_once(
    wired: Broker, engine: Engine
) -> None:
    Fleet(engine.store.r, engine.store.keys).leave("worker@test")  # it stopped cleanly
    with pytest.raises(errors.UnknownAccount) as caught:
        api.track_export("cometly", "1")
    assert str(caught.value) == (
        "account 'cometly' cannot be tracked: no live worker on redis://127.0.0.1:6379/0 with "
        "key prefix 'ep'; start a worker with POLLER_ACCOUNTS__COMETLY__PROVIDER=cometly and "
        "its credentials"
    )
    assert wired.polls == [] and list(engine.store.iter_ids()) == []


def test_served_accounts_is_what_the_live_workers_serve_now(wired: Broker, engine: Engine) -> None:
    assert api.served_accounts() == {"acme-cgc": "cgc", "cometly": "cometly"}
    Fleet(engine.store.r, engine.store.keys).leave("worker@test")
    assert api.served_accounts() == {}  # read now, not from the cache track_export keeps
