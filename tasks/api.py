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
MAX_SIGNATURE_BYTES = 8 * 1024
MAX_DEPTH = 32
MAX_TIMEOUT = 30 * 24 * 3600.0
# Callbacks run with the caller's arguments on any worker that knows the task: never ours or
# Celery's own (a forged `exports.*` message could finish or flood exports, `celery.*` runs
# maintenance), and only the signature keys and options that route a message.
RESERVED_TASK_PREFIXES = ("exports.", "celery.")
_SIGNATURE_KEYS = frozenset(
    {"task", "args", "kwargs", "options", "subtask_type", "immutable", "chord_size"}
)
_SIGNATURE_OPTIONS = frozenset(
    {"queue", "routing_key", "exchange", "priority", "expires", "countdown", "headers"}
    | {"soft_time_limit", "time_limit", "retry", "retry_policy", "task_id", "shadow"}
)
_KOMBU_KEYS = frozenset({"__type__", "__value__"})


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
    _check_account(account_name, cls.name)
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
    """A Celery signature (or its dict form), checked and stored as JSON; '' when absent."""
    if value is None:
        return ""
    if not isinstance(value, Mapping) or not isinstance(value.get("task"), str):
        raise errors.ConfigurationError(
            f"{name} must be a Celery signature, e.g. signature('myapp.export_ready')"
        )
    decoded = _json_object(value, name, MAX_SIGNATURE_BYTES)
    _check_signature_shape(decoded, name)
    return decoded


def _check_signature_shape(sig: dict[str, Any], name: str) -> None:
    task = sig["task"].strip()
    if not task or task.startswith(RESERVED_TASK_PREFIXES):
        raise errors.ConfigurationError(
            f"{name} must name one of your own tasks, not {task!r} "
            f"(names starting with {' or '.join(RESERVED_TASK_PREFIXES)} are reserved)"
        )
    unknown = sorted(set(sig) - _SIGNATURE_KEYS) + sorted(
        set(sig.get("options") or {}) - _SIGNATURE_OPTIONS
    )
    if unknown:
        raise errors.ConfigurationError(f"{name} has keys a callback may not set: {unknown}")
    shapes = {"args": list, "kwargs": dict, "options": dict}
    for key, kind in shapes.items():
        if sig.get(key) is not None and not isinstance(sig[key], kind):
            raise errors.ConfigurationError(f"{name}.{key} must be a {kind.__name__}")


def _json_object(value: Mapping[str, Any], name: str, most: int) -> dict[str, Any]:
    """A JSON copy of a caller's object: bounded in size and depth (deeper JSON would make
    the callback message undecodable), with no object kombu would decode as a typed value."""
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise errors.ConfigurationError(f"{name} must be JSON-serializable: {exc}") from None
    if len(text.encode("utf-8", "surrogatepass")) > most:
        raise errors.ConfigurationError(f"{name} is over {most} bytes as JSON")
    decoded: dict[str, Any] = json.loads(text)
    _check_nesting(decoded, name)
    return decoded


def _check_nesting(value: Any, name: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise errors.ConfigurationError(f"{name} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if value.keys() == _KOMBU_KEYS:
            raise errors.ConfigurationError(
                f"{name} must not hold an object with exactly the keys __type__ and __value__ "
                "(kombu would decode it as a typed value)"
            )
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return
    for item in items:
        _check_nesting(item, name, depth + 1)


def _metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise errors.ConfigurationError("metadata must be a JSON object (a dict)")
    return _json_object(value, "metadata", MAX_METADATA_BYTES)


def _timeout(value: object) -> float:
    if value is None:
        return get_settings().default_timeout
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.ConfigurationError("timeout must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT or not math.isfinite(value):
        raise errors.ConfigurationError(f"timeout must be in (0, {MAX_TIMEOUT:.0f}] seconds")
    return float(value)
