"""One simulated export job and its lifecycle: pending -> running -> completed or failed.

A job advances either by polls (the n-th answered status request decides the state, which makes
tests deterministic) or by time (pending for the first 10% of `duration_s`, terminal after it,
which is what a benchmark of detection lag needs). Faulted requests never advance a job.

`finished_at` is when the job became terminal at the provider; `reported_at` is when a status
answer first said so. Their difference is the poller's share of the detection lag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from export_poller.providers.simulator.faults import Fault

State = Literal["pending", "running", "completed", "failed"]
Outcome = Literal["completed", "failed"]
Phase = Literal["pending", "running", "terminal"]

TERMINAL: frozenset[str] = frozenset({"completed", "failed"})
PENDING_SHARE = 0.1


@dataclass(frozen=True)
class PollPlan:
    """`pending_polls` answers say pending, the next `running_polls` say running, then terminal."""

    pending_polls: int = 1
    running_polls: int = 1

    def phase(self, answer_no: int) -> tuple[Phase, float]:
        if answer_no <= self.pending_polls:
            return "pending", 0.0
        running_no = answer_no - self.pending_polls
        if running_no <= self.running_polls:
            return "running", running_no / (self.running_polls + 1)
        return "terminal", 1.0


@dataclass(frozen=True)
class TimePlan:
    """Pending for the first 10% of `duration_s`, running until it, then terminal."""

    duration_s: float

    @property
    def starts_after(self) -> float:
        return self.duration_s * PENDING_SHARE

    def phase(self, elapsed: float) -> tuple[Phase, float]:
        if elapsed >= self.duration_s:
            return "terminal", 1.0
        if elapsed < self.starts_after:
            return "pending", 0.0
        return "running", (elapsed - self.starts_after) / (self.duration_s - self.starts_after)


@dataclass(frozen=True, slots=True)
class JobView:
    """What one status answer shows about a job; immutable so rendering needs no lock."""

    provider: str
    id: str
    state: State
    progress: float
    partitions: int
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(slots=True)
class Job:
    """Mutable job record; only `JobStore` touches it, under its lock."""

    provider: str
    id: str
    outcome: Outcome
    plan: PollPlan | TimePlan
    partitions: int
    owner: str | None
    faults: tuple[Fault, ...]
    created_at: float
    poison: str | None = None
    polls: int = 0
    answered: int = 0
    faulted: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    reported_at: float | None = None
    last_poll_at: float | None = None

    def __post_init__(self) -> None:
        self._mark_milestones(self.created_at)

    @property
    def public_id(self) -> str | int:
        """Cometly ids are JSON numbers; everyone else's are strings."""
        return int(self.id) if self.provider == "cometly" else self.id

    def visible_to(self, credential: str) -> bool:
        return self.owner is None or self.owner == credential

    def state_at(self, answer_no: int, now: float) -> tuple[State, float]:
        if isinstance(self.plan, PollPlan):
            phase, progress = self.plan.phase(answer_no)
        else:
            phase, progress = self.plan.phase(now - self.created_at)
        return (self.outcome if phase == "terminal" else phase), progress

    def answer(self, now: float) -> JobView:
        """Advance by one answered poll and return what that answer shows."""
        self.answered += 1
        state, progress = self.state_at(self.answered, now)
        self._mark_milestones(now)
        if state in TERMINAL and self.reported_at is None:
            self.reported_at = now
        return self._view(state, progress, now)

    def _mark_milestones(self, now: float) -> None:
        if isinstance(self.plan, TimePlan):
            return
        if self.started_at is None and self.answered >= self.plan.pending_polls:
            self.started_at = now
        if self.finished_at is None and self.answered >= (
            self.plan.pending_polls + self.plan.running_polls
        ):
            self.finished_at = now

    def milestones(self, now: float) -> tuple[float | None, float | None]:
        """(started_at, finished_at) as known at `now`; time plans reach them on their own."""
        if isinstance(self.plan, PollPlan):
            return self.started_at, self.finished_at
        started = self.created_at + self.plan.starts_after
        finished = self.created_at + self.plan.duration_s
        return (started if now >= started else None), (finished if now >= finished else None)

    def _view(self, state: State, progress: float, now: float) -> JobView:
        """Milestones reached by this very answer show from the next one: a pending answer has
        no start time and a running one no finish time, whatever the clock says."""
        started, finished = self.milestones(now)
        started = None if state == "pending" else started
        finished = finished if state in TERMINAL else None
        return JobView(
            provider=self.provider,
            id=self.id,
            state=state,
            progress=progress,
            partitions=self.partitions,
            created_at=self.created_at,
            started_at=started,
            finished_at=finished,
        )

    def describe(self, now: float) -> dict[str, Any]:
        """The control API's view: the state the next answer would show, and the bookkeeping."""
        state, progress = self.state_at(self.answered + 1, now)
        started, finished = self.milestones(now)
        plan: dict[str, Any] = (
            {"duration_s": self.plan.duration_s}
            if isinstance(self.plan, TimePlan)
            else {
                "pending_polls": self.plan.pending_polls,
                "running_polls": self.plan.running_polls,
            }
        )
        return {
            "provider": self.provider,
            "id": self.public_id,
            "owner": self.owner,
            "outcome": self.outcome,
            "state": state,
            "progress": round(progress, 4),
            "plan": plan,
            "partitions": self.partitions,
            "polls": self.polls,
            "answered": self.answered,
            "faulted": self.faulted,
            "poison": self.poison,
            "created_at": self.created_at,
            "started_at": started,
            "finished_at": finished,
            "reported_at": self.reported_at,
            "last_poll_at": self.last_poll_at,
        }
