"""`track_export` is the boundary: bad input gets a clear error and nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest
from celery import signature

from export_poller import api
from export_poller.config.settings import AccountSettings, Settings
from export_poller.engine import Engine
from export_poller.providers import errors
from tests.unit.conftest import Broker


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
def test_an_account_missing_a_required_setting_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, account: AccountSettings, setting: str
) -> None:
    settings = Settings(_env_file=None, accounts={"space": account})  # type: ignore[call-arg]
    monkeypatch.setattr(api, "get_settings", lambda: settings)
    monkeypatch.setattr(api, "get_engine", lambda: engine)
    export_id = "123" if account.provider == "cometly" else "x1"
    with pytest.raises(errors.ConfigurationError, match=setting):
        api.track_export(account.provider, export_id, account="space")
    assert list(engine.store.iter_ids()) == []
