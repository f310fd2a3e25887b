"""Celery tasks: thin shells over the engine. Arguments are JSON primitives, never credentials."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from celery import Task, current_task, signature

from export_poller import heartbeat  # noqa: F401 - a worker's roster entry, by Celery's signals
from export_poller.celery import app, settings

# The engine (providers, guard, scripts) is imported by the tasks that use it, not here: beat
# loads this module for the app's tasks and never runs one, and a beat starts in half the CPU.

_REFUSAL_IDS = uuid.UUID("5d1f0c2a-8e47-4b39-a6f2-0c9e7b3d41a8")
log = logging.getLogger("export_poller.tasks")

# Leave room for the HTTP call (bounded by its own timeouts) well inside the poll lease.
_POLL_TIME_LIMIT = int(max(10.0, settings.lease_seconds - 10.0))


@app.task(
    name="exports.poll",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    time_limit=_POLL_TIME_LIMIT,
)
def poll(
    tracking_id: str,
    token: str,
    more: list[list[str]] | None = None,
    account: str | None = None,
) -> None:
    """Poll one export, or a train of one account's exports (`more` holds [tid, token] pairs);
    a stale or duplicate message is recognised by its tokens and ignored. `account` is None
    only in a message sent before messages named their account (it costs a read more)."""
    from export_poller.runtime import get_engine

    pairs = [(str(t), str(k)) for t, k in more or ()]
    get_engine().poll(tracking_id, token, pairs, None if account is None else str(account))


@app.task(name="exports.sweep", ignore_result=True, acks_late=True)
def sweep() -> None:
    from export_poller.runtime import get_engine

    report = get_engine().sweep()
    if report.enqueued or report.expired or report.callbacks:
        log.info(
            "sweep enqueued=%d expired=%d callbacks=%d",
            report.enqueued,
            report.expired,
            report.callbacks,
        )


@app.task(name="exports.track", acks_late=True)
def track(
    provider: str | None = None,
    export_id: str | None = None,
    account: str | None = None,
    on_complete: dict[str, Any] | None = None,
    on_failure: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    timeout: float | None = None,
    tracking_id: str | None = None,
    **unexpected: Any,
) -> str | None:
    """`track_export` by task name, for services that do not import this package.

    The caller may not read results, so a refusal is told to it: `on_failure` gets a record
    in state `refused` with the error's kind and message, and the refusal is logged at WARNING.
    Missing or unknown arguments are refusals too, not a TypeError only this log would show.
    """
    from export_poller.api import track_export
    from export_poller.providers.errors import ConfigurationError

    try:
        if unexpected:
            raise ConfigurationError(
                f"exports.track has no argument {', '.join(sorted(unexpected))}"
            )
        return track_export(
            provider,  # type: ignore[arg-type]  # checked there: a clear refusal if None
            export_id,  # type: ignore[arg-type]
            account=account,
            on_complete=on_complete,
            on_failure=on_failure,
            metadata=metadata,
            timeout=timeout,
            tracking_id=tracking_id,
        )
    except ConfigurationError as exc:
        call = {"provider": provider, "export_id": export_id, "account": account}
        _refuse(exc, call | {"metadata": metadata, "tracking_id": tracking_id}, on_failure)
        return None


def _refuse(exc: Exception, call: dict[str, Any], on_failure: object) -> None:
    from export_poller.api import callback_signature, callback_warnings, refusal_record
    from export_poller.providers.errors import ConfigurationError
    from export_poller.records import full_signature
    from export_poller.runtime import confirmed_producer

    record = refusal_record(exc, call)
    error = record["error"]
    log.warning(
        "track refused tracking_id=%s provider=%r export_id=%r kind=%s: %s",
        record["tracking_id"],
        record["provider"],
        record["export_id"],
        error["kind"],
        error["message"],
    )
    try:
        sig = callback_signature(on_failure, "on_failure")
    except ConfigurationError:
        sig = ""
    if not sig:
        log.warning("track refusal not told to the caller: no usable on_failure signature")
        return
    for warning in callback_warnings(sig):
        log.warning("track refusal: %s", warning)
    # A redelivered track message is refused again; its refusal keeps one task id, so the
    # caller can tell the repeat (as with a re-sent completion callback).
    request_id = getattr(current_task.request, "id", None) if current_task else None
    task_id = str(uuid.uuid5(_REFUSAL_IDS, request_id)) if request_id else None
    with confirmed_producer() as producer:
        signature(full_signature(sig), app=app).apply_async(  # type: ignore[arg-type]
            (record,), task_id=task_id, producer=producer
        )


@app.task(name="exports.record_callback", ignore_result=True, bind=True)
def record_callback(self: Task[Any, Any], record: dict[str, Any], label: str = "callback") -> None:
    """A ready-made callback for the demo and tests: keeps the record in a Redis list.

    The entry keeps the message's task id: a second entry with the same id is the broker
    redelivering one dispatch (Celery runs late-acked tasks at least once), a different id
    would be a second dispatch.
    """
    from export_poller.runtime import redis_client

    entry = json.dumps(
        {"label": label, "record": record, "task_id": self.request.id}, sort_keys=True
    )
    redis_client().rpush(f"{settings.key_prefix}:callbacks", entry)
    log.info(
        "callback %s tracking_id=%s state=%s", label, record.get("tracking_id"), record.get("state")
    )
