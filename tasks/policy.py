"""Pure policy: backoff, the next poll time and the state an answer leads to; how follow-ups
group into messages and how the backlog bound shares the broker among accounts.

Nothing here touches Redis, HTTP or the clock; every function is a function of its inputs, so the
rules that decide when a user's callback fires are tested on their own. The rules of one account
(breaker, train size, bisection, budget and pace) are `export_poller.account.rules`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from export_poller.account.rules import isolate
from export_poller.providers import errors
from export_poller.providers.models import ExportStatus, Outcome

ACTIVE_STATES: frozenset[str] = frozenset({"pending", "running"})
TERMINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "timed_out", "cancelled"})
FAILURE_STATES: frozenset[str] = frozenset({"failed", "timed_out"})

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter and a small floor; `maximum` is also the
    longest progress-aware wait, so the user's one setting bounds every wait we choose."""

    initial: float = 10.0
    factor: float = 2.0
    maximum: float = 240.0
    floor: float = 1.0

    def ceiling(self, attempt: int) -> float:
        """The largest wait after `attempt` polls (1-based); the exponent is capped."""
        exponent = min(max(attempt - 1, 0), 64)
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """A wait drawn uniformly from [floor, ceiling], so a fleet's polls spread out."""
        ceiling = self.ceiling(attempt)
        return max(self.floor, min(ceiling, rand() * ceiling))


@dataclass(frozen=True)
class PollContext:
    """What the policy needs to know about a tracked export at the moment an answer arrives."""

    attempts: int
    deadline: float
    refusals: int = 0
    started_at: float = 0.0
    state: str = "pending"
    suspect: bool = False  # its last poll found it to be a bulk request's poison id


@dataclass(frozen=True)
class Decision:
    """The record's next state; `next_poll_at` is None exactly when the state is terminal.

    `not_before` is set when the wait is the provider's (or an account hold's), not ours: no
    poll may run before it, where our own backoff tolerates a poll a little early.
    """

    state: str
    next_poll_at: float | None
    refusals: int = 0
    error: dict[str, Any] | None = None
    status: ExportStatus | None = None
    counted: bool = True
    not_before: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def next_poll_at(now: float, delay: float, deadline: float) -> float:
    """The last poll is placed at the deadline, never past it."""
    return min(now + delay, deadline)


def estimated_finish(status: ExportStatus, started_at: float, now: float) -> float | None:
    """Where a provider reports progress, extrapolate its rate to a finish time."""
    fraction = status.progress.fraction if status.progress else None
    if not fraction or fraction >= 1.0 or now <= started_at:
        return None
    return started_at + (now - started_at) / fraction


# Progress-aware waits, tuned with bench/backoff_sim.py on jobs whose partitions finish at an
# uneven rate: a quarter of the estimated time left (an estimate from a few partitions can be
# off by 2-3x), at most the time the job has run so far (no leap on an early, shaky estimate),
# at least 1% of it (which bounds the polls on a job stalled near the end), at most
# POLLER_BACKOFF_MAX (the user's one cap on any wait).
PROGRESS_SHARE = 0.25
PROGRESS_MIN_SHARE_OF_ELAPSED = 0.01


def progress_wait(
    status: ExportStatus, started_at: float, now: float, floor: float, ceiling: float
) -> float | None:
    """How long to wait when the provider says how far along it is; None without an estimate.

    Far from the end this waits longer than backoff would (where the savings come from); near
    the estimated finish the polls close in on it. A job that stalls short of the end is polled
    every 1% of its age, and its deadline still bounds it.
    """
    finish = estimated_finish(status, started_at, now)
    if finish is None:
        return None
    elapsed = now - started_at
    wait = max(PROGRESS_SHARE * (finish - now), PROGRESS_MIN_SHARE_OF_ELAPSED * elapsed, floor)
    return min(wait, elapsed + floor, ceiling)


def decide(
    ctx: PollContext,
    outcome: Outcome,
    now: float,
    backoff: Backoff,
    *,
    confirm_refusals: int = 3,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Map one poll's outcome to the record's next state and next poll time.

    An export already found to poison bulk requests that fails its request again the same
    way is refused again: that is how its refusal is confirmed when it is asked alone.
    """
    if ctx.suspect:
        outcome = isolate(outcome, neighbours_answered=True)
    if isinstance(outcome, ExportStatus):
        return _on_status(ctx, outcome, now, backoff, rand)
    if isinstance(outcome, errors.RateLimited):
        return _on_rate_limited(ctx, outcome, now)
    if isinstance(outcome, errors.Refused):
        return _on_refused(ctx, outcome, now, backoff, confirm_refusals, rand)
    return _retry(ctx, outcome, now, backoff, rand)


def _on_status(
    ctx: PollContext, status: ExportStatus, now: float, backoff: Backoff, rand: Callable[[], float]
) -> Decision:
    if status.terminal:
        error = failure_error(status) if status.state == "failed" else None
        return Decision(state=status.state, next_poll_at=None, status=status, error=error)
    if now >= ctx.deadline:
        return Decision(state="timed_out", next_poll_at=None, status=status, error=deadline_error())
    wait = progress_wait(status, ctx.started_at, now, backoff.floor, backoff.maximum)
    if wait is None:
        wait = backoff.delay(ctx.attempts, rand)
    return Decision(
        state=status.state, next_poll_at=next_poll_at(now, wait, ctx.deadline), status=status
    )


def _on_rate_limited(ctx: PollContext, exc: errors.RateLimited, now: float) -> Decision:
    """Poll no sooner than told, strictly; the attempt does not count (the provider did not
    look)."""
    if now >= ctx.deadline:
        return Decision(state="timed_out", next_poll_at=None, error=deadline_error(exc.as_dict()))
    at = min(now + max(exc.retry_after, 0.0), ctx.deadline)  # never wait past the deadline
    return Decision(
        state=ctx.state,
        next_poll_at=at,
        refusals=ctx.refusals,
        error=exc.as_dict(),
        counted=False,
        not_before=at,
    )


def _on_refused(
    ctx: PollContext,
    exc: errors.Refused,
    now: float,
    backoff: Backoff,
    confirm: int,
    rand: Callable[[], float],
) -> Decision:
    """A refusal ends the export only once it repeats, so one flaky 404 or 401 is not fatal."""
    refusals = ctx.refusals + 1
    if refusals >= confirm:
        return Decision(state="failed", next_poll_at=None, refusals=refusals, error=exc.as_dict())
    retry = _retry(ctx, exc, now, backoff, rand)
    return Decision(
        state=retry.state, next_poll_at=retry.next_poll_at, refusals=refusals, error=retry.error
    )


def _retry(
    ctx: PollContext,
    exc: errors.ProviderError,
    now: float,
    backoff: Backoff,
    rand: Callable[[], float],
) -> Decision:
    if now >= ctx.deadline:
        return Decision(state="timed_out", next_poll_at=None, error=deadline_error(exc.as_dict()))
    wait = backoff.delay(ctx.attempts, rand)
    # A failure of the whole request says nothing about this id: it keeps its refusal count.
    return Decision(
        state=ctx.state,
        next_poll_at=next_poll_at(now, wait, ctx.deadline),
        refusals=ctx.refusals,
        error=exc.as_dict(),
    )


# What ended an export, in the one shape of a finished record's `error` (a provider error's
# `as_dict()`): a refusal is its own error; these are the two endings that are not errors.
PROVIDER_FAILED = "provider_failed"
DEADLINE = "deadline"


def failure_error(status: ExportStatus) -> dict[str, Any]:
    """The provider says the export failed: its reason, as every other ending gives one (the
    provider's own words and code stay in `status.error`)."""
    said = status.error.message if status.error else status.message
    message = f"the provider reports the export failed: {said}" if said else None
    return {
        "kind": PROVIDER_FAILED,
        "message": message or "the provider reports the export failed",
        "status_code": None,
    }


def deadline_error(last: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """No terminal answer before the deadline; the last poll's error, if it failed, says why
    (its HTTP status is the record's `status_code`)."""
    message = "no terminal answer before the deadline"
    if last:
        message += f"; the last poll failed: {last.get('kind')}: {last.get('message')}"
    return {
        "kind": DEADLINE,
        "message": message,
        "status_code": last.get("status_code") if last else None,
    }


def callback_kind(state: str) -> str | None:
    """Which of the caller's callbacks a terminal state fires: none on cancel."""
    if state == "completed":
        return "on_complete"
    if state in FAILURE_STATES:
        return "on_failure"
    return None


def group_trains(delays: list[float], *, spread: float, most: int) -> list[list[int]]:
    """Indices of follow-up polls grouped into messages: sorted by wait, each group spanning
    at most `spread` seconds and `most` polls, so no poll runs more than `spread` early."""
    order = sorted(range(len(delays)), key=delays.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group and len(group) < most and delays[i] - delays[group[0]] <= spread:
            group.append(i)
        else:
            groups.append([i])
    return groups


def admits(ready: int, mine: int, *, cap: int, busy: int) -> bool:
    """Whether one more poll message of an account may go to the broker, given the fleet's
    `ready` messages and the account's own (`mine`) at its due time: below the fleet's `cap`
    and below an equal share of it among the `busy` accounts (messages in flight or polls
    waiting); and always when the account has none, so a small account's poll never waits
    for a sweep behind a big one's backlog (the bound is `cap` plus one per account). The
    store's admission script applies this rule in Redis."""
    share = max(1, cap // max(1, busy))
    return mine == 0 or (ready < cap and mine < share)


def fair_shares(
    room: int,
    demand: Mapping[str, int],
    ready: Mapping[str, int],
    weights: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Split `room` new poll messages among accounts, max-min fair: each goes to the account
    with the fewest messages ready in the broker (per weight) that still wants one. A small
    account is served in full at once; a big one takes what is left, so no account's polls
    wait behind another's backlog. Accounts given nothing are left out."""
    weight = weights or {}
    given = dict.fromkeys(demand, 0)
    heap = [(ready.get(a, 0) / weight.get(a, 1.0), a) for a, n in demand.items() if n > 0]
    heapq.heapify(heap)
    for _ in range(max(0, room)):
        if not heap:
            break
        _, account = heapq.heappop(heap)
        given[account] += 1
        if given[account] < demand[account]:
            load = (ready.get(account, 0) + given[account]) / weight.get(account, 1.0)
            heapq.heappush(heap, (load, account))
    return {a: n for a, n in given.items() if n}


def interleave(queues: Sequence[Sequence[T]]) -> list[T]:
    """Round-robin order of service: one message of each account in turn, so the first
    message of a small account is not queued behind every message of a big one."""
    out: list[T] = []
    for row in itertools.zip_longest(*queues):
        out.extend(item for item in row if item is not None)
    return out
