"""The train runner: one account's due exports asked in waves of requests, read in order.

A train is the exports one poll message (and what it took along) asks about; a wave is the
requests of a train in flight together. Answers are read in order, so a 429 or a timeout in one
wave stops the next one, and every request passes the account's gate before it leaves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from export_poller import clock
from export_poller.account import bisect, rules
from export_poller.account.gate import AccountGate
from export_poller.account.guard import AccountGuard
from export_poller.account.request import Asked, RequestPool
from export_poller.config.settings import Settings
from export_poller.providers import errors
from export_poller.providers.base import Provider
from export_poller.providers.models import Outcome
from export_poller.store import Claim

# A request to send: its claims, and the bisection it is part of (None: not split).
Chunk = tuple[list[Claim], bisect.Bisection | None]
# Commits what a train has read so far (the engine's settler; it skips what it committed).
Settle = Callable[[dict[str, Outcome]], None]


@dataclass
class _Train:
    """One train's requests: what it knows of the account's gate, and its bisections."""

    gate: AccountGate
    calm: bool  # the last wave was answered in full, far from any stated budget
    groups: list[bisect.Bisection] = field(default_factory=list)


class TrainRunner:
    """Runs the trains of every account in this process; remembers how each account's last
    train ended (calm or not), which decides how wide the next one starts."""

    def __init__(
        self, settings: Settings, guard: AccountGuard | None, rand: Callable[[], float]
    ) -> None:
        self.settings, self.guard, self.rand = settings, guard, rand
        self.requests = RequestPool(guard)
        self._calm: dict[str, bool] = {}  # per account: did its last train end calm?

    def size(self, account: str, provider: Provider) -> int:
        """Exports per train: as many requests as fit the train's time, as measured here."""
        return rules.train_size(
            self.requests.times.get(account),
            seconds=self.settings.train_seconds * self.settings.train_parallel,
            most=self.settings.train_max,
            batch_size=provider.batch_size,
        )

    def hold_back(self, account: str, claims: list[Claim]) -> dict[str, Outcome]:
        """Exports not asked because a request of their account just timed out: they wait a
        backoff step, as the rest of a train does after a timeout."""
        return AccountGate(account, self.guard, self.settings, self.rand).throttle(claims, {}, None)

    def run(
        self,
        provider: Provider,
        account: str,
        claims: list[Claim],
        settle: Settle | None = None,
    ) -> dict[str, Outcome]:
        """Requests of `batch_size`, up to POLLER_TRAIN_PARALLEL of them in flight together (a
        wave), until the train's time is up; once the account is held back (hold, pace, open
        breaker) the rest of the train waits with it. Every request passes the account's gate
        before it leaves; answers are read in order, so a 429 or a timeout in one wave stops the
        next one.

        A bulk request that fails as a whole in a way one id could cause is bisected: its
        halves are asked at once (they are not cut short by the train's time), so a poison id
        ends up alone and its neighbours get their answers in O(log n) extra requests.
        `settle` commits answers a wave's slow request would hold back (see `_send`).
        """
        started = clock.now()
        outcomes: dict[str, Outcome] = {}
        gate = AccountGate(account, self.guard, self.settings, self.rand)
        train = _Train(gate, calm=self._calm.get(account, False))  # as its last train ended
        queue: deque[Chunk] = deque(
            (chunk, None) for chunk in rules.chunks(claims, provider.batch_size)
        )
        while queue:
            wave, wait = self._next_wave(train, queue, started, bool(outcomes))
            splits: list[Chunk] = []
            train.calm, gate.slowed = True, False
            cut = self._send(provider, account, train, wave, outcomes, splits, settle)
            queue.extendleft(reversed(splits))
            if cut or wait is not None:  # the rest of the train waits with the account
                outcomes |= gate.throttle(claims, outcomes, None if cut else wait)
                break
            if not wave:
                break
        self._calm[account] = train.calm and gate.steady
        gate.close(bisect.conclude(account, train.groups, outcomes))
        return outcomes

    def _next_wave(
        self, train: _Train, queue: deque[Chunk], started: float, answered: bool
    ) -> tuple[list[Chunk], float | None]:
        """The requests to send together next, each let through by the gate; and the wait, if the
        gate held the account back. Empty with no wait: the train's time is up.

        A wave is one request wide until an answer came back calm (the first request of an
        account in this process, and after any failure, 429 or budget running low; a train
        starts as the account's last one ended), and while the account is paced or was held
        lately: there a train asks one request after another, as before."""
        wave: list[Chunk] = []
        width = self.settings.train_parallel if train.calm and train.gate.steady else 1
        # A wave's requests leave together: before each, read the account's shared hold, so a
        # 429 another worker (or thread) just met stops this train too, not only its next wave.
        train.gate.must_check = train.gate.must_check or width > 1
        while queue and len(wave) < width:
            chunk, group = queue[0]
            late = clock.now() - started > self.settings.train_seconds
            suspect = _timed_out_before(chunk)
            if (group is None and (answered or wave) and late) or (suspect and wave):
                break
            wait = train.gate.wait()
            if wait is not None:
                return wave, wait
            wave.append(queue.popleft())
            if suspect:  # asked alone: no answer waits on one that may trickle again
                break
        return wave, None

    def _send(
        self,
        provider: Provider,
        account: str,
        train: _Train,
        wave: list[Chunk],
        outcomes: dict[str, Outcome],
        splits: list[Chunk],
        settle: Settle | None,
    ) -> bool:
        """Send one wave and read its answers; True if one timed out or failed to connect.
        Answers in while others are still out after POLLER_TRAIN_SECONDS are read and settled
        at once: a first trickling answer (nothing marks that export yet) must not keep its
        wave-mates' callbacks back for the whole request deadline."""
        read: dict[int, bool] = {}

        def early(done: dict[int, Asked]) -> None:
            for i, asked in sorted(done.items()):
                read[i] = self._read(train, *wave[i], asked, outcomes, splits)
            if settle is not None:
                settle(outcomes)

        patience = self.settings.train_seconds
        answers = self.requests.send_wave(provider, account, wave, patience, early)
        for i, ((chunk, group), asked) in enumerate(zip(wave, answers, strict=True)):
            if i not in read:
                read[i] = self._read(train, chunk, group, asked, outcomes, splits)
        return any(read.values())

    def _read(
        self,
        train: _Train,
        chunk: list[Claim],
        group: bisect.Bisection | None,
        asked: Asked,
        outcomes: dict[str, Outcome],
        splits: list[Chunk],
    ) -> bool:
        """Read one answer of a wave; True if it timed out or failed to connect."""
        answers, whole, budget, held_until = asked
        gate = train.gate
        gate.calls += 1
        train.calm = train.calm and rules.calm(answers, whole, budget, self.settings.train_parallel)
        if not isinstance(whole, errors.RateLimited):  # a 429 holds the account itself
            gate.follow_budget(budget)
        split = bisect.split(chunk, whole, group, train.groups)
        if split:
            splits.extend(split)
            return False
        outcomes |= answers
        gate.follow_429(held_until, stated=budget is not None)
        if group is not None:  # counted toward the breaker once its bisection is over
            bisect.note(group, answers, whole)
        else:
            gate.count_failures(answers)
        return any(isinstance(o, errors.TransportError) for o in answers.values())


def timed_out(claim: Claim) -> bool:
    """Whether the export's last request timed out (or failed to connect)."""
    return claim.fields.get("error_kind") == errors.TransportError.kind


def _timed_out_before(chunk: list[Claim]) -> bool:
    return any(timed_out(c) for c in chunk)
