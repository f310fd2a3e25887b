"""Settings never show a password: not in a repr, a str, or the error a bad value raises."""

from __future__ import annotations

import pytest

from export_poller.config.settings import AccountSettings, InvalidSettings, Settings, get_settings

PASSWORD = "hunter2-secret"


def test_repr_and_str_mask_url_passwords_and_secrets() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=f"redis://:{PASSWORD}@127.0.0.1:6379/0",
        broker_url=f"rediss://poller:{PASSWORD}@redis.example:6380/1",
        accounts={
            "s": AccountSettings(
                provider="saymon",
                base_url=f"https://bot:{PASSWORD}@saymon.example",
                password=PASSWORD,
            )
        },
    )
    for shown in (repr(settings), str(settings), repr(settings.accounts["s"])):
        assert PASSWORD not in shown
        assert ":***@" in shown


def test_a_bad_base_url_error_names_the_setting_not_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLLER_ACCOUNTS__S__PROVIDER", "saymon")
    monkeypatch.setenv("POLLER_ACCOUNTS__S__BASE_URL", f"ftp://bot:{PASSWORD}@saymon.example")
    get_settings.cache_clear()
    try:
        with pytest.raises(InvalidSettings) as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert "POLLER_ACCOUNTS__S__BASE_URL" in str(caught.value)
    assert PASSWORD not in str(caught.value)
