"""The public API: `track_export`, `get_export`, `cancel_export`.

This is the boundary: every argument is checked here, and a mistake raises a
`ConfigurationError` subclass (a `ValueError`) before anything is stored or sent.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from typing import Any

from export_poller.config.settings import AccountSettings, get_settings
from export_poller.providers import errors
from export_poller.providers.registry import get_provider_class
from export_poller.runtime import get_engine

MAX_METADATA_BYTES = 16 * 1024
MAX_TIMEOUT = 30 * 24 * 3600.0


def track_export(
    provider: str,
    export_id: str,
    *,
    account: str | None = None,
    on_complete: Mapping[str, Any] | None = None,
    on_failure: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> str:
    """Start tracking an export and return its tracking id.

    Tracking the same (account, export id) again while it is active returns the same id, and
    its callback still fires once.
    """
    if not isinstance(provider, str):
        raise errors.UnknownProvider(f"provider must be a string, got {type(provider).__name__}")
    cls = get_provider_class(provider)
    account_name = _account_name(account, cls.name)
    cls.check_account(account_name, _check_account(account_name, cls.name))
    cls.validate_export_id(export_id)
    fields = {
        "provider": cls.name,
        "account": account_name,
        "export_id": export_id,
        "metadata": _metadata(metadata),
        "on_complete": _signature(on_complete, "on_complete"),
        "on_failure": _signature(on_failure, "on_failure"),
    }
    return get_engine().track(fields, _timeout(timeout))


def get_export(tracking_id: str) -> dict[str, Any] | None:
    """The tracked record (state, attempts, next poll, last status and error), or None."""
    return get_engine().get(tracking_id) if _plausible_id(tracking_id) else None


def cancel_export(tracking_id: str) -> bool:
    """Stop tracking; no callback fires. False if it is unknown or already finished."""
    return get_engine().cancel(tracking_id) if _plausible_id(tracking_id) else False


def _plausible_id(tracking_id: object) -> bool:
    return isinstance(tracking_id, str) and 0 < len(tracking_id) <= 64 and tracking_id.isalnum()


def _account_name(account: object, provider: str) -> str:
    if account is None:
        return provider
    if not isinstance(account, str) or not account.strip():
        raise errors.UnknownAccount("account must be a non-empty string")
    return account.strip().lower()


def _check_account(name: str, provider: str) -> AccountSettings:
    accounts = get_settings().accounts
    settings = accounts.get(name)
    if settings is None:
        close = difflib.get_close_matches(name, list(accounts), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise errors.UnknownAccount(
            f"unknown account {name!r}{hint}: configure it with "
            f"POLLER_ACCOUNTS__{name.upper()}__PROVIDER={provider} and its credentials"
        )
    if settings.provider != provider:
        raise errors.ConfigurationError(
            f"account {name!r} is a {settings.provider} account, not {provider}"
        )
    return settings


def _signature(value: object, name: str) -> dict[str, Any] | str:
    """A Celery signature (or its dict form), stored as JSON; '' when absent."""
    if value is None:
        return ""
    if not isinstance(value, Mapping) or not isinstance(value.get("task"), str):
        raise errors.ConfigurationError(
            f"{name} must be a Celery signature, e.g. signature('myapp.export_ready')"
        )
    try:
        decoded: dict[str, Any] = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise errors.ConfigurationError(f"{name} must be JSON-serializable: {exc}") from exc
    return decoded


def _metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise errors.ConfigurationError("metadata must be a JSON object (a dict)")
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise errors.ConfigurationError(f"metadata must be JSON-serializable: {exc}") from exc
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise errors.ConfigurationError(f"metadata is over {MAX_METADATA_BYTES} bytes as JSON")
    result: dict[str, Any] = json.loads(text)
    return result


def _timeout(value: object) -> float:
    if value is None:
        return get_settings().default_timeout
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.ConfigurationError("timeout must be a number of seconds")
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise errors.ConfigurationError(f"timeout must be in (0, {MAX_TIMEOUT:.0f}] seconds")
    return float(value)
