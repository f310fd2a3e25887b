"""Settling a train's answers: plan each export's next state, commit them all in one round trip,
then fire the callbacks of the finished ones and send the follow-up polls of the others.

The follow-ups of one account leave as few messages as their times allow, and only as many as
the backlog bound admits; the rest are parked in Redis for the fair sweep.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from export_poller import clock, policy
from export_poller.config.settings import Settings
from export_poller.outbox import Outbox
from export_poller.providers import errors
from export_poller.providers.models import ExportStatus, Outcome
from export_poller.records import error_fields, status_fields
from export_poller.store import Claim, Store, Write

log = logging.getLogger("export_poller.poll")

_TRAIN_SPREAD = 1.0  # seconds between the first and last planned poll of one message
# account, its (tid, token) pairs, countdown: a message names one account's exports, and which
SendPoll = Callable[[str, Sequence[tuple[str, str]], float], None]


@dataclass(frozen=True)
class _Plan:
    write: Write
    decision: policy.Decision
    delay: float | None
    follow_up: bool  # its next poll is sent now (not left to the sweep: too far off)


class Settler:
    """Commits answers and sends what follows from them."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        send_poll: SendPoll,
        outbox: Outbox,
        rand: Callable[[], float],
    ) -> None:
        self.settings, self.store, self.send_poll = settings, store, send_poll
        self.outbox, self.rand = outbox, rand
        self.backoff = policy.Backoff(
            settings.backoff_initial,
            settings.backoff_factor,
            settings.backoff_max,
            settings.backoff_floor,
        )

    def settle(self, claims: list[Claim], outcomes: dict[str, Outcome]) -> dict[str, str]:
        """Commit every answer in one round trip, then fire callbacks and send follow-ups."""
        plans = [self._plan(c, outcomes[c.tracking_id]) for c in claims]
        committed = self.store.commit_many([p.write for p in plans])
        states: dict[str, str] = {}
        follow: list[_Plan] = []
        for plan, ok in zip(plans, committed, strict=True):
            tid = plan.write.claim.tracking_id
            if not ok:
                log.warning("poll lost its claim tracking_id=%s", tid)
                states[tid] = "lost"
                continue
            _log_poll(plan)
            states[tid] = plan.decision.state
            if plan.decision.terminal:
                self.outbox.dispatch(tid)
            elif plan.follow_up:
                follow.append(plan)
        self._send_follow_ups(follow)
        return states

    def _plan(self, claim: Claim, outcome: Outcome) -> _Plan:
        rec, now = claim.fields, clock.now()
        ctx = policy.PollContext(
            attempts=int(rec["attempts"]) + 1,
            deadline=float(rec["deadline"]),
            refusals=int(rec.get("refusals") or 0),
            started_at=float(rec["created_at"]),
            state=rec["state"],
            suspect=rec.get("error_kind") == errors.Poisoned.kind,
        )
        decision = policy.decide(
            ctx,
            outcome,
            now,
            self.backoff,
            confirm_refusals=self.settings.confirm_refusals,
            rand=self.rand,
        )
        delay = None if decision.next_poll_at is None else decision.next_poll_at - now
        follow_up = delay is not None and delay <= self.settings.enqueue_horizon
        sched = decision.next_poll_at
        if follow_up and sched is not None:
            sched += self.settings.rescue_grace
        said = outcome.state if isinstance(outcome, ExportStatus) else outcome.kind
        write = Write(
            claim,
            _fields_for(decision, ctx, now),
            os.urandom(8).hex(),  # a new token, as unique as a uuid4's 64 bits, without the object
            now,
            decision.terminal,
            sched,
            said,
        )
        return _Plan(write, decision, delay, follow_up)

    def _send_follow_ups(self, plans: list[_Plan]) -> None:
        """Follow-ups due within a second of each other leave as one message, at the earliest
        time of the group, or at the latest provider-stated time in it (never before that)."""
        if not plans:
            return
        delays = [max(0.0, p.delay or 0.0) for p in plans]
        groups = policy.group_trains(delays, spread=_TRAIN_SPREAD, most=self.settings.train_max)
        messages = []
        for group in groups:
            pairs = [(plans[i].write.claim.tracking_id, plans[i].write.new_token) for i in group]
            strict = [delays[i] for i in group if plans[i].decision.not_before is not None]
            messages.append((pairs, max([delays[group[0]], *strict])))
        self.send_or_park(plans[0].write.claim.fields["account"], messages)

    def send_or_park(
        self, account: str, messages: list[tuple[list[tuple[str, str]], float]]
    ) -> None:
        """Send one account's poll messages (pairs, countdown) the backlog bound admits, in one
        round trip; the rest are parked in the schedule at their time, for the fair sweep."""
        if not messages:
            return
        now, s = clock.now(), self.settings
        due = [(pairs, now + countdown) for pairs, countdown in messages]
        admitted = self.store.admit(account, due, now=now, cap=s.backlog_max, grace=s.rescue_grace)
        for (pairs, countdown), ok in zip(messages, admitted, strict=True):
            if ok:
                self.send_poll(account, pairs, countdown)
        if not all(admitted):
            log.info(
                "polls parked by the backlog bound account=%s messages=%d",
                account,
                admitted.count(False),
            )


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
    if decision.not_before is not None:
        fields["not_before"] = decision.not_before
    if decision.terminal:
        fields["finished_at"] = now
    return fields


_LOUD = {
    errors.CredentialsRefused.kind: logging.ERROR,
    errors.Misconfigured.kind: logging.ERROR,
    errors.Poisoned.kind: logging.WARNING,
}


def _log_poll(plan: _Plan) -> None:
    """One line per poll that says something new (a change of state, an error); an account
    problem an operator must fix is logged loudly. A poll that finds an export as it was is
    logged at DEBUG: at INFO, a line per routine poll cost a worker 5% of its CPU."""
    rec, delay = plan.write.claim.fields, plan.delay
    level = _LOUD.get(plan.write.outcome, logging.INFO)
    if plan.write.outcome == plan.decision.state == rec.get("state"):
        level = logging.DEBUG
    log.log(
        level,
        "poll tracking_id=%s provider=%s account=%s outcome=%s state=%s attempts=%s next_delay=%s",
        plan.write.claim.tracking_id,
        rec.get("provider"),
        rec.get("account"),
        plan.write.outcome,
        plan.decision.state,
        plan.write.fields["attempts"],
        "-" if delay is None else f"{delay:.1f}",
    )
