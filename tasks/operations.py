"""Day-two operations on tracked exports: refresh a finished one, redeliver its callback, and
say why an active one looks stuck. Public as `export_poller.api.refresh_export` and friends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from export_poller import clock, policy, runtime
from export_poller.config.settings import QUEUE_PATTERN, get_settings
from export_poller.providers import errors
from export_poller.providers.models import ExportStatus
from export_poller.records import full_signature

log = logging.getLogger("export_poller.api")
QUEUE_NAME = re.compile(QUEUE_PATTERN)


class OperationFailed(RuntimeError):
    """A refresh or redelivery that could not be done now (provider error, account held)."""


def _finished(tracking_id: str) -> dict[str, str]:
    from export_poller.api import UnknownTrackingId, _plausible_id

    fields = runtime.get_engine().store.get(tracking_id) if _plausible_id(tracking_id) else None
    if fields is None:
        raise UnknownTrackingId(f"unknown tracking id {tracking_id!r}")
    if fields.get("state") in policy.ACTIVE_STATES:
        raise errors.ConfigurationError(
            f"export {tracking_id} is still {fields['state']}: it is polled, and its callback "
            "fires once it ends"
        )
    return fields


def redeliver_callback(tracking_id: str, queue: str | None = None) -> dict[str, Any]:
    """Send a finished export's callback again, on purpose; the record counts `redeliveries`
    and the record sent carries the count, so the caller can tell a redelivery apart.

    With `queue`, the callback goes to that queue whatever its signature's routing (a callback
    sent where no worker runs it is fixed this way); the record notes it as `redelivered_to`.
    Returns the record, with `warnings` when there is something to tell (logged too)."""
    from export_poller.api import callback_warnings

    engine = runtime.get_engine()
    target = None if queue is None else queue_name(queue)
    fields = _finished(tracking_id)
    sig = _callback(tracking_id, fields)
    if target is not None:
        sig["options"] = rerouted(sig.get("options") or {}, target)
    warnings = callback_warnings(sig)
    if target is None and fields.get("warning"):
        warnings = [_same_queue_again(tracking_id, sig)]
    to = {"redelivered_at": clock.now(), "redelivered_to": destination(sig) or ""}
    engine.store.note_finished(tracking_id, "redeliveries", to)
    record = engine.get(tracking_id) or {}
    engine.outbox.fire(sig, record)
    log.info("callback redelivered tracking_id=%s to=%s", tracking_id, to["redelivered_to"])
    for warning in warnings:
        log.warning("redelivery tracking_id=%s: %s", tracking_id, warning)
    return record | {"warnings": warnings} if warnings else record


def _callback(tracking_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """The finished export's callback signature, as it will be sent."""
    kind = policy.callback_kind(fields.get("state", ""))
    if kind is None:
        raise errors.ConfigurationError(f"export {tracking_id} was cancelled: no callback fires")
    ref = fields.get(kind)
    signature = runtime.get_engine().store.get_signature(ref) if ref else None
    if signature is None:
        why = "its signature has expired" if ref else "none was given"
        raise errors.ConfigurationError(f"export {tracking_id} has no {kind} callback: {why}")
    return full_signature(signature)


def queue_name(value: object, label: str = "queue") -> str:
    """A queue name as the queue settings take it (`QUEUE_PATTERN`); anything else is refused
    here, by every boundary that takes one (redeliver, track --callback-queue)."""
    if not isinstance(value, str) or len(value) > 200 or not QUEUE_NAME.fullmatch(value):
        raise errors.ConfigurationError(
            f"{label} {value!r} is not a queue name: 1 to 200 letters, digits, '_', '.', ':' or '-'"
        )
    return value


def rerouted(options: Mapping[str, Any], queue: str) -> dict[str, Any]:
    """A signature's options sent to `queue`: an exchange or routing key of its own would
    route the message past the queue (Celery lets them override it), so they go."""
    kept = {k: v for k, v in options.items() if k not in ("exchange", "routing_key")}
    return kept | {"queue": queue}


def destination(sig: Mapping[str, Any]) -> str | None:
    """The queue a callback is sent to: its own, this service's for one that names none, or
    None when the caller's exchange routes it."""
    options = sig.get("options") or {}
    if options.get("queue"):
        return str(options["queue"])
    if options.get("exchange") or options.get("routing_key"):
        return None
    return get_settings().queue


def _same_queue_again(tracking_id: str, sig: Mapping[str, Any]) -> str:
    return (
        f"callback {sig.get('task')!r} goes to queue {destination(sig)!r} again, the queue the "
        f"record's warning is about; re-route it with `export-poller redeliver {tracking_id} "
        "--queue YOUR_QUEUE` (API: redeliver_callback(tracking_id, queue=...))"
    )


def refresh_export(tracking_id: str, *, callback: bool = False) -> dict[str, Any]:
    """Ask the provider about a finished export once more (a Cometly download URL expires 15
    minutes after the poll that fetched it) and keep its fresh answer in the record's
    `status`; the state stays. The callback fires again only if `callback` is true."""
    engine = runtime.get_engine()
    fields = _finished(tracking_id)
    account, export_id = fields["account"], fields["export_id"]
    provider = engine.providers.get(account)
    wait = engine.guard.take_slot(account, clock.now()) if engine.guard else None
    if wait is not None:
        raise OperationFailed(f"account {account!r} is held back; try again in {wait:.0f}s")
    answer = provider.ask([export_id]).outcomes.get(export_id)
    if not isinstance(answer, ExportStatus):
        error = answer or errors.BadResponse("no answer about this export")
        raise OperationFailed(f"{fields['provider']} did not answer ({error.kind}): {error}")
    status = answer.model_dump(mode="json", exclude_none=True)
    engine.store.note_finished(
        tracking_id, "refreshes", {"status": status, "refreshed_at": clock.now()}
    )
    log.info("export refreshed tracking_id=%s state=%s", tracking_id, status.get("state"))
    return redeliver_callback(tracking_id) if callback else engine.get(tracking_id) or {}


def stuck_reasons(record: Mapping[str, Any], now: float, periods: float = 3.0) -> list[str]:
    """Why an active export looks stuck, from what the store already knows: no answer for
    `periods` of its longest wait, a poll overdue past the sweep's rescue (no worker or beat?),
    or an account no live worker serves, held back, or whose credentials were refused."""
    settings = get_settings()
    if record.get("state") not in policy.ACTIVE_STATES:
        return []
    reasons = []
    longest = settings.backoff_max  # progress-aware waits are capped by it too
    last = record.get("updated_at") or record.get("created_at") or now
    if now - last > periods * longest:
        reasons.append(f"no answer for {now - last:.0f}s ({periods:g} waits of {longest:g}s)")
    due = record.get("next_poll_at")
    late = 2 * settings.rescue_grace + settings.lease_seconds
    if due and now - due > late:
        reasons.append(f"poll overdue by {now - due:.0f}s: are a worker and beat running?")
    return reasons + _account_reasons(record)


def _account_reasons(record: Mapping[str, Any]) -> list[str]:
    account = str(record.get("account"))
    if not runtime.get_engine().roster.serves(account):
        return [f"no live worker serves account {account!r}"]
    error = record.get("error") or {}
    kind = error.get("kind")
    if kind == "credentials_refused":
        return [f"account {account!r}: credentials refused"]
    if kind == "misconfigured":
        return [f"account {account!r} is misconfigured on a worker: {error.get('message')}"]
    held = record.get("account_held_until")
    if held and held > clock.now():
        return [f"account {account!r} is held back by its provider for {held - clock.now():.0f}s"]
    if kind in ("throttled", "rate_limited"):
        return [f"account {account!r} is held back ({kind})"]
    guard = runtime.get_engine().guard
    if guard is not None and guard.breaker_state(account, clock.now()) == "open":
        return [f"account {account!r}: breaker open"]
    return []
