"""The account gate, as one train sees it: holds, budgets, 429s, pace and the breaker.

The gate's truth is fleet-wide, in Redis (`AccountGuard`); a train keeps its own view of it, read
at the start, after a failure and every quarter second (before every request while the account
meets its limit), so a healthy train does not pay a Redis round trip per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from export_poller import clock
from export_poller.account import rules
from export_poller.account.guard import AccountGuard
from export_poller.config.settings import Settings
from export_poller.providers import errors
from export_poller.providers.answer import Budget
from export_poller.providers.models import Outcome
from export_poller.store import Claim

log = logging.getLogger("export_poller.poll")

_GATE_REFRESH = 0.25  # seconds a train trusts its last read of the account's hold and breaker
_AFTER_TIMEOUT = "held back: a request just timed out or failed to connect"
_HELD = "is held back (a provider's rate limit, its pace or an open breaker)"


class AccountGate:
    """One train's view of its account's gate, the holds it writes, and its breaker tally."""

    def __init__(
        self,
        account: str,
        guard: AccountGuard | None,
        settings: Settings,
        rand: Callable[[], float],
    ) -> None:
        self.account, self.guard, self.settings, self.rand = account, guard, settings, rand
        self.calls = 0  # answers not yet counted toward the breaker
        self.checked_at = float("-inf")
        self.must_check = True
        self.hold_until = 0.0
        self.pace: float | None = None
        self.held_lately = False
        self.slowed = False  # this wave's 429s already slowed the account's pace (once a wave)

    @property
    def steady(self) -> bool:
        """Neither paced nor held lately: a train may send whole waves."""
        return not self.held_lately and self.pace is None

    def wait(self) -> float | None:
        """Seconds the account must wait before the next request, or None to go.

        The shared hold and breaker are read at the start of a train, after a failure and
        every `_GATE_REFRESH` seconds, not before every request of a healthy run; an account
        held in the last minutes (it meets its provider's limit) is read before every request,
        so another worker's 429 stops this train at once.
        """
        now = clock.now()
        if self.hold_until > now:
            return self.hold_until - now
        if self.guard is None:
            return None
        if self.must_check or self.held_lately or now - self.checked_at >= _GATE_REFRESH:
            self.checked_at, self.must_check = now, False
            reading = self.guard.read(self.account, now)
            self.pace, self.held_lately = reading.pace, reading.held_lately
            if reading.wait is not None:
                return reading.wait
        if self.pace is not None:  # learned from 429s: one slot per request, fleet-wide
            wait = self.guard.take_pace_slot(self.account, now, self.pace)
            if wait is not None:
                return wait
        return self.guard.take_rate_slot(self.account, now)

    def throttle(
        self, claims: list[Claim], outcomes: dict[str, Outcome], wait: float | None
    ) -> dict[str, Outcome]:
        """The train's exports not asked yet, throttled: they wait with the account, `wait`
        seconds as the gate said (a hold, the pace, an open breaker), plus up to half a second
        so they do not all come back at once. No `wait`: a request just timed out or failed to
        connect, and the rest waits a backoff step instead of queueing behind the same slow
        provider, thread after thread."""
        if wait is None:
            wait, why = self.settings.backoff_initial, _AFTER_TIMEOUT
        else:
            why = _HELD
        throttled = errors.Throttled(
            f"account {self.account!r} {why}", retry_after=wait + self.rand() * 0.5
        )
        return {c.tracking_id: throttled for c in claims if c.tracking_id not in outcomes}

    def follow_budget(self, budget: Budget | None) -> None:
        """Hold the account before its stated budget runs out (every answer, split ones too)."""
        if budget is None:
            return
        until = rules.budget_hold(budget.remaining, budget.limit, budget.reset_at, clock.now())
        if until is not None and until > self.hold_until:
            self.hold(until, "budget")

    def follow_429(self, until: float, *, stated: bool) -> None:
        """A provider's 429 speaks for the whole account: every worker waits until its time
        (`until`, held fleet-wide by the request's own thread when it read the answer; 0.0 for
        no 429). Where the provider states no budget, the 429 also slows the account's pace."""
        if not until:
            return
        self.hold(until, "429", written=True)
        if not stated and self.guard and not self.slowed:
            self.slowed = True
            self.pace = self.guard.slow_down(self.account, clock.now())
            log.warning("account paced account=%s rate=%.2f/s", self.account, self.pace)

    def hold(self, until: float, reason: str, *, written: bool = False) -> None:
        """Hold the account until `until`: this train at once, every worker through the guard
        (unless the hold is `written` there already), and the log line an operator reads.
        `reason` is "429" (the provider said so) or "budget" (its stated budget is spent)."""
        self.hold_until = max(self.hold_until, until)
        level = logging.WARNING if reason == "429" else logging.INFO
        seconds = until - clock.now()
        log.log(
            level, "account held account=%s reason=%s seconds=%.1f", self.account, reason, seconds
        )
        if not written and self.guard:
            self.guard.hold(self.account, self.hold_until, clock.now(), reason=reason)

    def count_failures(self, answers: dict[str, Outcome]) -> None:
        """Count a failure toward the breaker at once, with the answers before it."""
        if not any(rules.counts_as_failure(o) for o in answers.values()):
            return
        self.must_check = True
        if self.guard:
            if self.guard.count_answers(self.account, clock.now(), calls=self.calls, failures=1):
                log.warning("breaker open account=%s", self.account)
            self.calls = 0

    def close(self, failures: int) -> None:
        """Count the train's remaining answers (and what bisecting found) toward the breaker."""
        if (self.calls or failures) and self.guard:
            now = clock.now()
            if self.guard.count_answers(self.account, now, calls=self.calls, failures=failures):
                log.warning("breaker open account=%s", self.account)
