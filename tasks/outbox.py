"""The callback outbox: where a caller's callback fires, once.

A finished export's commit puts it in the outbox (in the same script, so no finish is lost
between the two); `Outbox.dispatch` claims it, fires the caller's callback through
`fire_callback` (a Celery signature sent to the caller's queue) and acks it. A worker that dies
in between leaves the claim to expire, and the sweep dispatches it again, under the same task id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError

from export_poller import clock, policy
from export_poller.config.brokers import redact_text
from export_poller.config.settings import Settings
from export_poller.records import full_signature, public_view
from export_poller.store import Store

log = logging.getLogger("export_poller.poll")
callbacks_log = logging.getLogger("export_poller.callbacks")
# The caller's callback as a Celery signature (a dict) and the public record it is called with.
FireCallback = Callable[[dict[str, Any], dict[str, Any]], None]

_CALLBACK_IDS = uuid.UUID("0b6c3f5e-2f7a-4d0e-9a51-6c1f3e2d8a40")


def callback_task_id(record: dict[str, Any]) -> str:
    """One id per export's callback, the same on every dispatch: if a worker dies after the
    broker took the callback and before the outbox noted it, the sweep's second dispatch
    carries the first one's id, so a callback can tell a repeat from a new one. A redelivery
    asked for on purpose (`export-poller redeliver`) is a new one: it gets an id of its own."""
    key = f"{record['tracking_id']}:{record['state']}"
    if record.get("redeliveries"):
        key += f":{record['redeliveries']}"
    return str(uuid.uuid5(_CALLBACK_IDS, key))


def fire_callback(sig: dict[str, Any], record: dict[str, Any]) -> None:
    """Fire the caller's callback: send its signature, called with the record, to the broker
    (publisher-confirmed on RabbitMQ). Every callback of a tracked export leaves from here,
    redeliveries included; only a refused `exports.track` tells its on_failure elsewhere
    (`jobs._refuse`: there is no record, and so no outbox, to dispatch it from)."""
    from celery import signature

    from export_poller.api import callback_warnings
    from export_poller.celery import app
    from export_poller.runtime import confirmed_producer

    for warning in callback_warnings(sig):  # said at track time too, and kept in the record
        callbacks_log.warning("tracking_id=%s: %s", record.get("tracking_id"), warning)
    with confirmed_producer() as producer:
        signature(sig, app=app).apply_async(
            (record,), task_id=callback_task_id(record), producer=producer
        )


class Outbox:
    """Dispatches finished exports' callbacks, each once, through `fire`."""

    def __init__(self, settings: Settings, store: Store, fire: FireCallback) -> None:
        self.settings, self.store, self.fire = settings, store, fire

    def _fire_once(self, tid: str) -> bool:
        """Claim the export's outbox entry, fire its callback, ack: the outbox retries if we
        die in between."""
        now = clock.now()
        rec = self.store.claim_outbox(tid, now=now, retry_at=now + self.settings.rescue_grace)
        if rec is None:
            return False
        if not rec:
            self.store.drop_outbox(tid)
            return False
        kind = policy.callback_kind(rec.get("state", ""))
        ref = rec.get(kind) if kind else None
        signature = self.store.get_signature(ref) if ref else None
        if ref and signature is None:
            log.error("callback signature expired tracking_id=%s", tid)
        if signature:
            self.fire(full_signature(signature), public_view(tid, rec))
        done = clock.now()
        lag = done - float(rec["finished_at"]) if signature and rec.get("finished_at") else None
        self.store.ack_outbox(
            tid, now=done, ttl=self.settings.record_ttl, provider=rec.get("provider", ""), lag=lag
        )
        log.info("callback tracking_id=%s state=%s sent=%s", tid, rec.get("state"), kind)
        return bool(signature)

    def dispatch(self, tid: str) -> bool:
        """Fire a finished export's callback once, without letting one callback hurt the
        others: a broker outage is retried by the sweep as it is; any other failure counts
        towards the dead-letter set. True if a callback fired."""
        try:
            return self._fire_once(tid)
        except (OSError, KombuOperationalError):
            log.warning("callback dispatch failed; the sweep retries tracking_id=%s", tid)
            return False
        except Exception as exc:
            error = redact_text(f"{type(exc).__name__}: {exc}")[:200]
            dead = self.store.fail_outbox(
                tid,
                now=clock.now(),
                error=error,
                most=self.settings.callback_attempts,
                ttl=self.settings.record_ttl,
            )
            log.error("callback dispatch failed tracking_id=%s dead_letter=%s", tid, dead)
            return False
