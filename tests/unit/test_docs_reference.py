"""The docs' settings and CLI references are rendered from the code (docs/hooks.py): every
setting and command appears, and a setting without a description stops the build."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel, Field

from export_poller.config.settings import AccountSettings, Settings

HOOKS = Path(__file__).resolve().parents[2] / "docs" / "hooks.py"


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", HOOKS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_is_in_the_reference_with_its_default(hooks: ModuleType) -> None:
    table = hooks.settings_reference()
    service = [name for name in Settings.model_fields if name != "accounts"]
    assert all(f"`POLLER_{name.upper()}`" in table for name in service)
    assert all(
        f"`POLLER_ACCOUNTS__<NAME>__{n.upper()}`" in table for n in AccountSettings.model_fields
    )
    assert "| `POLLER_BACKOFF_MAX` | number > 0 | `240` |" in table
    assert "| `POLLER_ACCOUNTS__<NAME>__TOKEN` | secret (optional) | unset |" in table


def test_a_setting_without_a_description_fails_the_build(hooks: ModuleType) -> None:
    class Undescribed(BaseModel):
        described: int = Field(1, description="says why")
        bare: int = 2

    assert "says why" in hooks._row(Undescribed, "described", "POLLER_DESCRIBED")
    with pytest.raises(ValueError, match=r"Undescribed\.bare has no Field\(description"):
        hooks._row(Undescribed, "bare", "POLLER_BARE")


def test_the_cli_reference_shows_every_command(hooks: ModuleType) -> None:
    from export_poller.cli import main

    text = hooks.cli_reference()
    assert all(f"### `export-poller {name}`" in text for name in main.commands)
    assert "Usage: export-poller track [OPTIONS] PROVIDER EXPORT_ID" in text
