"""`POLLER_PROFILE`: the trial profile's short waits, which any explicit setting overrides, and
the demo that runs on it rather than on settings of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from export_poller.config.settings import (
    PROFILES,
    InvalidSettings,
    Settings,
    get_settings,
    reset_settings,
)


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An environment with no POLLER_* setting and no `.env` file read."""
    for name in list(os.environ):
        if name.upper().startswith("POLLER_"):
            monkeypatch.delenv(name)
    monkeypatch.setitem(Settings.model_config, "env_file", None)
    reset_settings()
    yield monkeypatch
    reset_settings()


def test_production_is_the_default_and_keeps_the_minutes_long_backoff(
    environ: pytest.MonkeyPatch,
) -> None:
    settings = get_settings()
    assert settings.profile == "production"
    assert (settings.backoff_initial, settings.backoff_max, settings.backoff_floor) == (10, 240, 1)
    assert settings.rescue_grace == 30


def test_the_trial_profile_polls_every_few_seconds(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("POLLER_PROFILE", "Trial")
    settings = get_settings()
    assert settings.profile == "trial"
    assert (settings.backoff_initial, settings.backoff_max, settings.backoff_floor) == (
        0.5,
        3.0,
        0.2,
    )
    assert (settings.rescue_grace, settings.lease_seconds, settings.http_read_timeout) == (
        6.0,
        45.0,
        5.0,
    )
    assert settings.default_timeout == 24 * 3600.0  # what the profile does not name stays


def test_a_setting_set_explicitly_wins_over_the_profile(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("POLLER_PROFILE", "trial")
    environ.setenv("POLLER_BACKOFF_MAX", "20")
    settings = get_settings()
    assert settings.backoff_max == 20 and settings.backoff_initial == 0.5
    assert Settings(backoff_initial=2.0).backoff_initial == 2.0


def test_an_unknown_profile_names_the_variable_and_the_profiles(
    environ: pytest.MonkeyPatch,
) -> None:
    environ.setenv("POLLER_PROFILE", "trail")
    with pytest.raises(InvalidSettings, match=r"POLLER_PROFILE: .*'production' or 'trial'"):
        get_settings()


def test_the_profiles_description_names_every_value_it_changes() -> None:
    """The settings reference is generated from the model: it must say what `trial` does."""
    description = Settings.model_fields["profile"].description or ""
    for name, value in PROFILES["trial"].items():
        assert f"POLLER_{name.upper()}={value:g}" in description


def test_the_demo_runs_on_the_trial_profile_not_on_values_of_its_own(
    environ: pytest.MonkeyPatch,
) -> None:
    from export_poller.demo import Private, private_env

    env = private_env("redis://127.0.0.1:7000/0", "http://127.0.0.1:8900", Private())
    assert env["POLLER_PROFILE"] == "trial"
    assert not [name for name in env if name.startswith(("POLLER_BACKOFF", "POLLER_LEASE"))]
    for name, value in env.items():
        if name.startswith("POLLER_"):
            environ.setenv(name, value)
    reset_settings()
    assert get_settings().backoff_max == PROFILES["trial"]["backoff_max"]
