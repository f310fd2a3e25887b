"""The engine: one poll, one sweep, one callback dispatch, each a short walk over the store.

Celery is only the delivery of hints here. `Engine` gets two senders (a poll message, a callback)
so the same code runs under a real worker and in unit tests with a fake broker and fakeredis.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from providers import errors
from providers.base import Provider
from providers.models import ExportStatus
from providers.registry import get_provider_class
from tasks import clock, policy
from tasks.guards import AccountGuard
from tasks.records import (
    compact_signature,
    error_fields,
    full_signature,
    public_view,
    status_fields,
)
from tasks.store import Claim, Store

log = logging.getLogger("export_poller.poll")

Outcome = ExportStatus | errors.ProviderError
_SWEEP_ROUNDS = 10  # batches per sweep: bounded, so one sweep never runs long
SendPoll = Callable[[str, str, float], None]
SendCallback = Callable[[dict[str, Any], dict[str, Any]], None]


class ProviderPool:
    """One adapter (and so one pooled HTTP session) per account, built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def get(self, account: str) -> Provider:
        with self._lock:
            provider = self._providers.get(account)
            if provider is None:
                provider = self._providers[account] = self._build(account)
            return provider

    def _build(self, account: str) -> Provider:
        settings = self.settings.accounts.get(account)
        if settings is None:
            raise errors.UnknownAccount(f"account {account!r} is not configured")
        return get_provider_class(settings.provider)(account, settings, self.settings)


@dataclass
class SweepReport:
    enqueued: int = 0
    expired: int = 0
    callbacks: int = 0


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        send_poll: SendPoll,
        send_callback: SendCallback,
        *,
        providers: ProviderPool | None = None,
        guard: AccountGuard | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.store = store
        self.send_poll = send_poll
        self.send_callback = send_callback
        self.providers = providers or ProviderPool(settings)
        self.guard = guard
        self.rand = rand
        self.backoff = policy.Backoff(
            settings.backoff_initial,
            settings.backoff_factor,
            settings.backoff_max,
            settings.backoff_floor,
            settings.progress_max_wait,
        )

    # -- tracking ----------------------------------------------------------------------------

    def track(self, fields: dict[str, Any], timeout: float) -> str:
        """Store a new record (or find the active one) and send its first poll now."""
        now = clock.now()
        token = uuid.uuid4().hex[:16]
        record = {
            **self._compact(fields, timeout),
            "state": "pending",
            "attempts": 0,
            "refusals": 0,
            "created_at": now,
            "updated_at": now,
            "deadline": now + timeout,
            "next_poll_at": now,
            "token": token,
        }
        created, tid = self.store.track(
            uuid.uuid4().hex[:20], record, rescue_at=now + self.settings.rescue_grace
        )
        if created:
            self.send_poll(tid, token, 0.0)
        return tid

    def _compact(self, fields: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Signatures become shared references; empty values are left out of the record."""
        out = {k: v for k, v in fields.items() if k not in ("on_complete", "on_failure")}
        ttl = timeout + self.settings.record_ttl + self.settings.rescue_grace
        for name in ("on_complete", "on_failure"):
            if fields.get(name):
                out[name] = self.store.put_signature(compact_signature(fields[name]), ttl)
        if not out.get("metadata"):
            out.pop("metadata", None)
        if self.providers.get(str(fields["account"])).batch_size > 1:
            out["batch"] = "1"
        return out

    def cancel(self, tid: str) -> bool:
        fields = {"updated_at": clock.now(), "finished_at": clock.now(), "next_poll_at": ""}
        return self.store.finish(
            tid,
            "cancelled",
            fields,
            now=clock.now(),
            notify=False,
            respect_lease=False,
            ttl=self.settings.record_ttl,
        )

    def get(self, tid: str) -> dict[str, Any] | None:
        fields = self.store.get(tid)
        return public_view(tid, fields) if fields else None

    # -- one poll ----------------------------------------------------------------------------

    def poll(self, tid: str, token: str) -> str:
        """Poll one export if this message is still the current one; returns what happened.

        For providers with bulk status calls (CGC), other due exports of the same account are
        claimed too and asked about in the same request; each still gets its own commit.
        """
        now = clock.now()
        lease_until = now + self.settings.lease_seconds
        claim = self.store.claim(tid, token, uuid.uuid4().hex, now=now, lease_until=lease_until)
        if isinstance(claim, str):
            log.info("poll dropped tracking_id=%s reason=%s", tid, claim)
            return claim
        account = claim.fields["account"]
        try:
            provider = self.providers.get(account)
        except errors.ConfigurationError as exc:
            return self._apply(claim, errors.RetryLater(str(exc)))
        claims = [claim, *self._batch_mates(claim, provider, now, lease_until)]
        outcomes = self._ask(provider, account, claims)
        states = [self._apply(c, outcomes[c.tracking_id]) for c in claims]
        return states[0]

    def _batch_mates(
        self, claim: Claim, provider: Provider, now: float, lease_until: float
    ) -> list[Claim]:
        if provider.batch_size <= 1:
            return []
        return self.store.claim_batch(
            claim.fields["account"],
            claim.claim_id,
            now=now,
            lease_until=lease_until,
            due_by=now + self.settings.backoff_floor,
            limit=provider.batch_size - 1,
        )

    def _ask(self, provider: Provider, account: str, claims: list[Claim]) -> dict[str, Outcome]:
        """One request for these claims; always an outcome per claim, never an exception."""
        wait = self.guard.admit(account, clock.now()) if self.guard else None
        if wait is not None:
            held = errors.Throttled(
                f"account {account!r} is held back (rate limit or open breaker)",
                retry_after=wait + self.rand() * 0.5,
            )
            return {c.tracking_id: held for c in claims}
        ids = [c.fields["export_id"] for c in claims]
        by_id: dict[str, Outcome]
        try:
            by_id = provider.fetch_many(ids)
        except errors.ProviderError as exc:
            by_id = dict.fromkeys(ids, exc)
        except Exception as exc:
            log.exception("adapter bug account=%s", account)
            by_id = dict.fromkeys(ids, errors.BadResponse(f"adapter raised {type(exc).__name__}"))
        if self.guard:
            failed = any(
                isinstance(o, errors.ServerError | errors.TransportError) for o in by_id.values()
            )
            if self.guard.record(account, failed, clock.now()):
                log.warning("breaker open account=%s", account)
        missing = errors.BadResponse(f"{provider.name} said nothing about this export")
        return {c.tracking_id: by_id.get(c.fields["export_id"], missing) for c in claims}

    def _apply(self, claim: Claim, outcome: Outcome) -> str:
        rec, now = claim.fields, clock.now()
        ctx = policy.PollContext(
            attempts=int(rec["attempts"]) + 1,
            deadline=float(rec["deadline"]),
            refusals=int(rec.get("refusals") or 0),
            started_at=float(rec["created_at"]),
            state=rec["state"],
        )
        decision = policy.decide(
            ctx,
            outcome,
            now,
            self.backoff,
            confirm_refusals=self.settings.confirm_refusals,
            rand=self.rand,
        )
        fields = _fields_for(decision, ctx, now)
        delay = None if decision.next_poll_at is None else decision.next_poll_at - now
        handoff = delay is not None and delay <= self.settings.enqueue_horizon
        sched = decision.next_poll_at
        if handoff and sched is not None:
            sched += self.settings.rescue_grace
        token = uuid.uuid4().hex[:16]
        said = outcome.state if isinstance(outcome, ExportStatus) else outcome.kind
        if not self.store.commit(
            claim,
            fields,
            new_token=token,
            now=now,
            terminal=decision.terminal,
            sched_score=sched,
            outcome=said,
        ):
            log.warning("poll lost its claim tracking_id=%s", claim.tracking_id)
            return "lost"
        _log_poll(claim, outcome, decision, delay, fields["attempts"])
        if decision.terminal:
            self._safe_dispatch(claim.tracking_id)
        elif handoff and delay is not None:
            self.send_poll(claim.tracking_id, token, max(0.0, delay))
        return decision.state

    # -- callbacks ---------------------------------------------------------------------------

    def dispatch(self, tid: str) -> bool:
        """Send the callback of a finished export once; the outbox retries if we die first."""
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
            self.send_callback(full_signature(signature), public_view(tid, rec))
        done = clock.now()
        lag = done - float(rec["finished_at"]) if signature and rec.get("finished_at") else None
        self.store.ack_outbox(
            tid, now=done, ttl=self.settings.record_ttl, provider=rec.get("provider", ""), lag=lag
        )
        log.info("callback tracking_id=%s state=%s sent=%s", tid, rec.get("state"), kind)
        return bool(signature)

    def _safe_dispatch(self, tid: str) -> None:
        try:
            self.dispatch(tid)
        except Exception:
            log.exception("callback dispatch failed; the sweep retries tracking_id=%s", tid)

    # -- the sweep ---------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        """Send due and lost polls, expire overdue exports, drain the outbox: work ~ due items."""
        report = SweepReport()
        now, s = clock.now(), self.settings
        for _ in range(_SWEEP_ROUNDS):
            send, expired = self.store.due(now, now + s.rescue_grace, s.sweep_batch, s.rescue_grace)
            for tid in expired:
                report.expired += int(self._expire(tid, now))
            for tid, token in send:
                self.send_poll(tid, token, 0.0)
            report.enqueued += len(send)
            if len(send) + len(expired) < s.sweep_batch:
                break
        for tid in self.store.outbox_due(now, s.sweep_batch):
            report.callbacks += int(self.dispatch(tid))
        return report

    def _expire(self, tid: str, now: float) -> bool:
        error = {"kind": "deadline", "message": "no terminal answer before the deadline"}
        fields = {"updated_at": now, "finished_at": now, "next_poll_at": "", "error": error}
        done = self.store.finish(
            tid,
            "timed_out",
            fields,
            now=now,
            notify=True,
            respect_lease=True,
            ttl=self.settings.record_ttl,
        )
        return done


def _fields_for(decision: policy.Decision, ctx: policy.PollContext, now: float) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "state": decision.state,
        "updated_at": now,
        "attempts": ctx.attempts if decision.counted else ctx.attempts - 1,
        "refusals": decision.refusals,
        "next_poll_at": "" if decision.next_poll_at is None else decision.next_poll_at,
    }
    if decision.status is not None:
        fields |= status_fields(decision.status, decision.terminal)
    if decision.error is not None:
        fields |= error_fields(decision.error, decision.terminal)
    if decision.terminal:
        fields["finished_at"] = now
    return fields


def _log_poll(
    claim: Claim,
    outcome: ExportStatus | errors.ProviderError,
    decision: policy.Decision,
    delay: float | None,
    attempts: int,
) -> None:
    rec = claim.fields
    said = outcome.state if isinstance(outcome, ExportStatus) else outcome.kind
    log.info(
        "poll tracking_id=%s provider=%s account=%s outcome=%s state=%s attempts=%s next_delay=%s",
        claim.tracking_id,
        rec.get("provider"),
        rec.get("account"),
        said,
        decision.state,
        rec.get("attempts"),
        "-" if delay is None else f"{delay:.1f}",
    )
