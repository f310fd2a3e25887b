"""The public API: `track_export`, `get_export`, `cancel_export`, and the day-two operations
`refresh_export` and `redeliver_callback`.

This is the boundary: every argument is checked here, and a mistake raises a
`ConfigurationError` subclass (a `ValueError`) before anything is stored or sent.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from export_poller import clock
from export_poller.config.settings import get_settings
from export_poller.providers import errors
from export_poller.providers.redaction import KOMBU_KEYS, Redactor, secret_forms
from export_poller.providers.registry import get_provider_class
from export_poller.roster import served
from export_poller.runtime import get_engine

log = logging.getLogger("export_poller.api")

MAX_METADATA_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 8 * 1024
MAX_DEPTH = 32
MAX_TIMEOUT = 30 * 24 * 3600.0
# Callbacks run with the caller's arguments on any worker that knows the task: never ours or
# Celery's own (a forged `exports.*` message could finish or flood exports, `celery.*` runs
# maintenance), and only the signature keys and options that route a message.
RESERVED_TASK_PREFIXES = ("exports.", "celery.")
# ...except the ready-made callback of the demo and tests, which only appends the record to a
# list: it drives nothing.
OPEN_SERVICE_TASKS = frozenset({"exports.record_callback"})
_SIGNATURE_KEYS = frozenset(
    {"task", "args", "kwargs", "options", "subtask_type", "immutable", "chord_size"}
)
_SIGNATURE_OPTIONS = frozenset(
    {"queue", "routing_key", "exchange", "priority", "expires", "countdown", "headers"}
    | {"soft_time_limit", "time_limit", "retry", "retry_policy", "task_id", "shadow"}
)
# A caller-chosen id: letters, digits, '-' and '_', 8 to 64 characters (a UUID fits).
TRACKING_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{7,63}$")
_ID_CHARS = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UnknownTrackingId(errors.ConfigurationError):
    """No tracked export has this id (or prefix), or the prefix names several."""


def track_export(
    provider: str,
    export_id: str,
    *,
    account: str | None = None,
    on_complete: Mapping[str, Any] | None = None,
    on_failure: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    tracking_id: str | None = None,
) -> str:
    """Start tracking an export and return its tracking id.

    Tracking the same (account, export id) again while it is active returns the same id, and
    its callback still fires once. A caller-chosen `tracking_id` lets a caller that cannot
    read a result know the id beforehand; repeating the call with it is harmless. The account
    is looked up in the live workers' roster, not in this process's settings, which need none.
    """
    if not isinstance(provider, str):
        raise errors.UnknownProvider(f"provider must be a string, got {type(provider).__name__}")
    cls = get_provider_class(provider)
    account_name = _account_name(account, cls.name)
    cls.validate_export_id(export_id)
    chosen = _tracking_id(tracking_id)
    fields: dict[str, Any] = {
        "provider": cls.name,
        "account": account_name,
        "export_id": export_id,
        "metadata": _metadata(metadata),
        "on_complete": _signature(on_complete, "on_complete"),
        "on_failure": _signature(on_failure, "on_failure"),
    }
    seconds = _timeout(timeout)
    engine = get_engine()
    engine.roster.check(account_name, cls.name)  # last: the one check that reads Redis
    tid = engine.track(_with_warnings(fields), seconds, chosen)
    if chosen and tid != chosen:
        raise _taken(chosen, tid, fields)
    return tid


def _taken(chosen: str, tid: str, fields: dict[str, Any]) -> errors.ConfigurationError:
    """A caller-chosen id that was not given: its export is tracked under another id ("" when
    the id is another export's)."""
    return errors.ConfigurationError(
        f"export {fields['export_id']!r} of account {fields['account']!r} is already tracked "
        f"as {tid}"
        if tid
        else f"tracking id {chosen!r} is already used by another export"
    )


def _with_warnings(fields: dict[str, Any]) -> dict[str, Any]:
    """The record's fields, with what can be told about its callbacks now (logged, and kept
    in the record as `warning`)."""
    warnings = callback_warnings(fields["on_complete"], fields["on_failure"])
    for warning in warnings:
        log.warning("export %s/%s: %s", fields["account"], fields["export_id"], warning)
    if warnings:
        fields["warning"] = "; ".join(warnings)
    return fields


def _tracking_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not TRACKING_ID.match(value):
        raise errors.ConfigurationError(
            "tracking_id must be 8 to 64 letters, digits, '-' or '_', starting with a letter "
            "or digit"
        )
    return value


def get_export(tracking_id: str) -> dict[str, Any] | None:
    """The tracked record (state, attempts, next poll, last status and error), or None."""
    return get_engine().get(tracking_id) if _plausible_id(tracking_id) else None


def cancel_export(tracking_id: str) -> bool:
    """Stop tracking; no callback fires. False if it is unknown or already finished."""
    return get_engine().cancel(tracking_id) if _plausible_id(tracking_id) else False


def served_accounts() -> dict[str, str]:
    """The accounts the live workers serve, name -> provider, read now: what `track_export`
    accepts. An application can wait on it at start-up instead of racing its workers."""
    table = served(get_engine().roster.workers(fresh=True))
    return {name: ", ".join(sorted(providers)) for name, providers in sorted(table.items())}


def _plausible_id(tracking_id: object) -> bool:
    return isinstance(tracking_id, str) and bool(_ID_CHARS.match(tracking_id))


def resolve_id(text: str) -> str:
    """A tracking id, or a unique prefix of one (the CLI's tables show 12 characters)."""
    if not _plausible_id(text):
        raise UnknownTrackingId(f"unknown tracking id {text!r}")
    store = get_engine().store
    if store.get(text) is not None:
        return text
    found = store.ids_with_prefix(text, limit=6)
    if not found:
        raise UnknownTrackingId(f"unknown tracking id {text!r}")
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise UnknownTrackingId(f"tracking id prefix {text!r} is ambiguous: {shown}")
    return found[0]


def _account_name(account: object, provider: str) -> str:
    if account is None:
        return provider
    if not isinstance(account, str) or not account.strip():
        raise errors.UnknownAccount("account must be a non-empty string")
    return account.strip().lower()


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
    options = decoded.get("options")
    options = decoded["options"] = dict(options) if isinstance(options, Mapping) else {}
    queue = get_settings().callback_queue
    if queue and not any(options.get(k) for k in ("queue", "exchange", "routing_key")):
        options["queue"] = queue  # POLLER_CALLBACK_QUEUE: where a callback naming none goes
    return decoded


def _check_signature_shape(sig: dict[str, Any], name: str) -> None:
    task = sig["task"].strip()
    if not task or (task.startswith(RESERVED_TASK_PREFIXES) and task not in OPEN_SERVICE_TASKS):
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
        if value.keys() == KOMBU_KEYS:
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


def callback_signature(value: object, name: str) -> dict[str, Any] | str:
    """A callback as it will be sent: checked, with POLLER_CALLBACK_QUEUE applied."""
    return _signature(value, name)


def callback_warnings(*signatures: object) -> list[str]:
    """What can be told before sending: a callback routed to this service's own queue whose
    task its workers do not have is discarded there ("Received unregistered task")."""
    own, known = get_settings().queue, _service_tasks()
    out = []
    for sig in signatures:
        if not isinstance(sig, Mapping):
            continue
        options = sig.get("options") or {}
        if options.get("exchange") or options.get("routing_key"):
            continue  # routed by the caller's own exchange: nothing to tell from here
        queue = options.get("queue") or own
        if queue == own and sig.get("task") not in known:
            out.append(
                f"callback {sig.get('task')!r} goes to this service's queue {own!r}, whose "
                "workers do not have that task and discard it; route it to your own queue "
                "(signature(..., queue='myapp'), --callback-queue or POLLER_CALLBACK_QUEUE)"
            )
    return out


def consumed_queues(timeout: float = 1.0) -> set[str] | None:
    """The queues the workers on the broker consume, by asking them all (a remote-control
    broadcast: `timeout` seconds, since it cannot know how many will answer); None if none
    answered. Measured by bench/consumer_check.py: ~1 s, so the CLI asks, not every callback."""
    from export_poller.celery import app

    replies = app.control.inspect(timeout=timeout).active_queues()
    if not replies:
        return None
    return {q["name"] for queues in replies.values() for q in queues or () if q.get("name")}


@cache
def _service_tasks() -> frozenset[str]:
    """This service's task names: fixed once its tasks are registered, so read once."""
    from export_poller import jobs  # noqa: F401 - registers this service's tasks on the app
    from export_poller.celery import app

    return frozenset(name for name in app.tasks if not name.startswith("celery."))


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


# -- the caller always hears back ----------------------------------------------------------------


def redact(text: str) -> str:
    """A message fit for a caller's record: every configured secret, in every spelling the
    adapters mask (see `providers.redaction`), and URL passwords masked."""
    forms: set[str] = set()
    try:
        for acct in get_settings().accounts.values():
            forms |= secret_forms(acct)
    except ValueError:
        pass  # unreadable settings hold nothing to mask
    text = Redactor(forms).text(text)
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return text if len(text) <= 500 else text[:499] + "…"


def _kind(exc: Exception) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _echo(value: object) -> str | None:
    return None if value is None else redact(str(value)[:200])


def refusal_record(exc: Exception, call: Mapping[str, Any]) -> dict[str, Any]:
    """The record a refused `exports.track` sends to its `on_failure`: the shape of a finished
    record, state `refused`, and the error's kind and (redacted) message."""
    now = clock.now()
    chosen = call.get("tracking_id")
    try:
        metadata = _metadata(call.get("metadata"))
    except errors.ConfigurationError:
        metadata = {}
    return {
        "tracking_id": chosen if isinstance(chosen, str) and TRACKING_ID.match(chosen) else None,
        "provider": _echo(call.get("provider")),
        "account": _echo(call.get("account")),
        "export_id": _echo(call.get("export_id")),
        "state": "refused",
        "attempts": 0,
        "metadata": metadata,
        "status": None,
        "error": {"kind": _kind(exc), "message": redact(str(exc))},
        "created_at": now,
        "updated_at": now,
        "finished_at": now,
        "deadline": None,
        "next_poll_at": None,
    }


# The day-two operations live in their own room; their public names are here, as documented.
from export_poller.operations import (  # noqa: E402
    OperationFailed,
    redeliver_callback,
    refresh_export,
    stuck_reasons,
)

__all__ = [
    "OperationFailed",
    "UnknownTrackingId",
    "callback_signature",
    "callback_warnings",
    "cancel_export",
    "consumed_queues",
    "get_export",
    "redeliver_callback",
    "refresh_export",
    "refusal_record",
    "resolve_id",
    "stuck_reasons",
    "track_export",
]
