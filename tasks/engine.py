"""The engine: one poll, one sweep, one callback dispatch, each a short walk over the store.

Celery is only the delivery of hints here. `Engine` gets two senders (a poll message, a callback)
so the same code runs under a real worker and in unit tests with a fake broker and fakeredis.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from kombu.exceptions import OperationalError as KombuOperationalError

from export_poller import clock, policy
from export_poller.account import rules
from export_poller.account.guard import AccountGuard
from export_poller.config.brokers import redact_text
from export_poller.config.settings import Settings
from export_poller.providers import errors
from export_poller.providers.answer import Answer, Budget
from export_poller.providers.base import Provider
from export_poller.providers.models import ExportStatus, Outcome
from export_poller.providers.registry import get_provider_class
from export_poller.records import (
    compact_signature,
    error_fields,
    full_signature,
    public_view,
    status_fields,
)
from export_poller.store import Claim, Store, Write

log = logging.getLogger("export_poller.poll")

T = TypeVar("T")
_SWEEP_ROUNDS = 10  # batches per sweep: bounded, so one sweep never runs long
_TRAIN_SPREAD = 1.0  # seconds between the first and last planned poll of one message
_ROUTINE_DROPS = frozenset({"busy", "stale", "done"})
_LOGGED_DROPS = 5  # per message: the log stays bounded whatever a message names
_MOST_PER_MESSAGE = 1000  # above any train we send (50 by default, a CGC request holds 100)
_GATE_REFRESH = 0.25  # seconds a train trusts its last read of the account's hold and breaker
# Threads that send the second and later requests of a wave, shared by every train of the
# process and started only as needed: at most (a worker's threads) x (POLLER_TRAIN_PARALLEL - 1)
# are ever busy at once.
_REQUEST_THREADS = 256
SendPoll = Callable[[Sequence[tuple[str, str]], float], None]  # (tid, token) pairs, countdown
SendCallback = Callable[[dict[str, Any], dict[str, Any]], None]
# One request's answer (its outcomes by tracking id) and the time its 429 holds the account
# until (0.0 if none).
_Asked = tuple[Answer, float]


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


class RequestTimes:
    """A moving average of each account's request time in this process: it sizes trains."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self._avg: dict[str, float] = {}

    def get(self, account: str) -> float | None:
        return self._avg.get(account)

    def observe(self, account: str, seconds: float) -> None:
        old = self._avg.get(account)
        self._avg[account] = seconds if old is None else old + self.weight * (seconds - old)


@dataclass(frozen=True)
class _Plan:
    write: Write
    decision: policy.Decision
    delay: float | None
    handoff: bool


@dataclass
class _Bisect:
    """One failed bulk request being split: its budget of extra requests, the ids of each of
    its parts that was not split further, the ids asked alone after a failure (the suspects),
    and whether any part was answered (the provider is up, so a suspect is the poison)."""

    budget: int
    requests: list[list[str]] = field(default_factory=list)
    leaves: set[str] = field(default_factory=set)
    answered: bool = False


@dataclass
class _Run:
    """One train's requests: its breaker tally and what it knows of the account's gate."""

    calls: int = 0
    checked_at: float = float("-inf")
    must_check: bool = True
    hold_until: float = 0.0
    pace: float | None = None
    limited: bool = False
    groups: list[_Bisect] = field(default_factory=list)
    calm: bool = False  # the last wave was answered in full, far from any stated budget
    slowed: bool = False  # this wave's 429s already slowed the account's pace (once a wave)


def _split(
    chunk: list[Claim],
    whole: errors.ProviderError | None,
    group: _Bisect | None,
    run: _Run,
) -> list[tuple[list[Claim], _Bisect]] | None:
    """The two halves to ask next when a whole-request failure may be one id's fault."""
    if whole is None or not rules.batch_suspect(whole):
        return None
    if len(chunk) == 1:
        if group is not None:
            group.leaves.add(chunk[0].tracking_id)
        return None
    if group is None:
        group = _Bisect(rules.bisect_budget(len(chunk)))
        run.groups.append(group)
    if group.budget < 2:
        return None
    group.budget -= 2
    left, right = rules.halves(chunk)
    return [(left, group), (right, group)]


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
        self.request_seconds = RequestTimes()
        self._gate_views: dict[str, tuple[float, float | None, float | None]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._calm: dict[str, bool] = {}  # per account: did its last train end calm?
        self._lag_view: tuple[float, dict[str, float]] = (float("-inf"), {})
        self.backoff = policy.Backoff(
            settings.backoff_initial,
            settings.backoff_factor,
            settings.backoff_max,
            settings.backoff_floor,
        )

    # -- tracking ----------------------------------------------------------------------------

    def track(self, fields: dict[str, Any], timeout: float, tracking_id: str | None = None) -> str:
        """Store a new record (or find the active one) and send its first poll now; with a
        caller-chosen id, "" means that id is already used by another export."""
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
        store_track = self.store.track_as if tracking_id else self.store.track
        created, tid, admitted = store_track(
            tracking_id or uuid.uuid4().hex[:20],
            record,
            rescue_at=now + self.settings.rescue_grace,
            cap=self.settings.backlog_max,
            grace=self.settings.rescue_grace,
        )
        if created and admitted:  # else parked by the backlog bound, for the fair sweep
            self.send_poll([(tid, token)], 0.0)
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
        """The public record; `account_held_until` shows a fleet-wide hold of its account."""
        fields = self.store.get(tid)
        if not fields:
            return None
        view = public_view(tid, fields)
        if self.guard is not None and view["state"] in policy.ACTIVE_STATES:
            view["account_held_until"], view["account_pace"] = self._account_gate(fields["account"])
        if view["state"] in policy.ACTIVE_STATES:
            view["account_lag"] = self._lags().get(fields["account"])
        return view

    def _lags(self) -> dict[str, float]:
        """Each account's lag as the last sweep saw it, read at most once a second."""
        now = clock.now()
        if self._lag_view[0] <= now:
            self._lag_view = (now + 1.0, self.store.account_lags())
        return self._lag_view[1]

    def backlog_view(self) -> dict[str, Any]:
        """The fleet's backlog for operators: poll messages in the broker (ready now, and all
        of them, countdowns included) against POLLER_BACKLOG_MAX, due polls still parked in
        Redis, and how late each account's most overdue poll is (`lag`, seconds)."""
        return {
            **self.store.backlog(clock.now()),
            "bound": self.settings.backlog_max,
            "lag": self.store.account_lags(),
        }

    def _account_gate(self, account: str) -> tuple[float | None, float | None]:
        """An account's hold and pace for views, read at most once a second per account (a
        `list` of many exports must not read them once per export)."""
        now = clock.now()
        cached = self._gate_views.get(account)
        if cached is None or cached[0] <= now or self.guard is None:
            held = self.guard.held_until(account, now) if self.guard else None
            pace = self.guard.pace(account, now) if self.guard else None
            cached = self._gate_views[account] = (now + 1.0, held, pace)
        return cached[1], cached[2]

    # -- one poll ----------------------------------------------------------------------------

    def poll(self, tid: str, token: str, more: Sequence[tuple[str, str]] = ()) -> str:
        """Poll the exports a message names that are still its to poll; returns what became of
        the first (its new state, or why the message was dropped: stale, busy, done...).

        A message names one export or a train of one account's exports. The run takes the
        account's other due exports along, up to what fits its time budget, so a fleet sends
        one message per train instead of one per poll; every export still has its own claim,
        commit and callback.
        """
        now = clock.now()
        pairs = self._bounded([(tid, token), *more])
        lease_until = now + self.settings.lease_seconds
        results = self.store.claim_many(pairs, uuid.uuid4().hex, now=now, lease_until=lease_until)
        by_account: dict[str, list[Claim]] = {}
        dropped = 0
        for (ptid, ptoken), result in zip(pairs, results, strict=True):
            if not isinstance(result, str):
                by_account.setdefault(result.fields["account"], []).append(result)
            elif result.startswith("wait:"):
                # Too early for a provider's stated time: come back then, not after a rescue.
                self.send_poll([(ptid, ptoken)], max(0.0, float(result[5:]) - now))
                log.info("poll deferred tracking_id=%s until=%s", ptid, result[5:])
            else:
                dropped += 1
                if dropped <= _LOGGED_DROPS:
                    # Routine when a train took the export along before its own message came
                    # (busy, stale), or it ended meanwhile (done): said at DEBUG.
                    level = logging.DEBUG if result in _ROUTINE_DROPS else logging.INFO
                    log.log(level, "poll dropped tracking_id=%s reason=%s", ptid, result)
        if dropped > _LOGGED_DROPS:
            log.debug("poll dropped %d more exports of this message", dropped - _LOGGED_DROPS)
        states: dict[str, str] = {}
        for account, claims in by_account.items():
            states |= self._poll_account(account, claims, now, lease_until)
        first = results[0]
        if isinstance(first, str):
            return first.partition(":")[0]
        return states.get(tid, "lost")

    def _bounded(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """No train we send names more than 1,000 exports (POLLER_TRAIN_MAX is 50 by default,
        a bulk request holds 100): a longer message is forged, and its tail is left to the
        sweep rather than to one long, loud run."""
        most = max(self.settings.train_max, _MOST_PER_MESSAGE)
        if len(pairs) > most:
            log.warning("poll message names %d exports; polling the first %d", len(pairs), most)
        return pairs[:most]

    def _poll_account(
        self, account: str, claims: list[Claim], now: float, lease_until: float
    ) -> dict[str, str]:
        try:
            provider = self.providers.get(account)
        except errors.ConfigurationError as exc:
            log.error("account misconfigured on this worker account=%s: %s", account, exc)
            return self._settle(claims, dict.fromkeys(_ids(claims), errors.Misconfigured(str(exc))))
        claims = claims + self.store.claim_due(
            account,
            claims[0].claim_id,
            now=now,
            lease_until=lease_until,
            due_by=now + self.settings.backoff_floor,
            limit=self._train_size(account, provider) - len(claims),
        )
        # An export whose last request timed out may trickle again: its neighbours are asked
        # and settled first, so none of them waits on it or is held back when it times out.
        fresh: list[Claim] = []
        slow: list[Claim] = []
        for claim in claims:
            (slow if _timed_out(claim) else fresh).append(claim)
        states = self._run_train(provider, account, fresh)
        return states | self._run_train(provider, account, slow)

    def _run_train(self, provider: Provider, account: str, claims: list[Claim]) -> dict[str, str]:
        """Ask and settle one train; what its time left unasked is passed on in new trains."""
        if not claims:
            return {}
        outcomes = self._ask_train(provider, account, claims)
        states = self._settle([c for c in claims if c.tracking_id in outcomes], outcomes)
        unasked = [c for c in claims if c.tracking_id not in outcomes]
        if unasked:  # out of time: fan the rest out, in trains sized by what was measured
            self.store.release(unasked, rescue_at=clock.now() + self.settings.rescue_grace)
            pairs = [(c.tracking_id, c.fields["token"]) for c in unasked]
            trains = _chunks(pairs, self._train_size(account, provider))
            self._hand_off(account, [(train, 0.0) for train in trains])
        return states

    def _train_size(self, account: str, provider: Provider) -> int:
        return rules.train_size(
            self.request_seconds.get(account),
            budget=self.settings.train_seconds * self.settings.train_parallel,
            most=self.settings.train_max,
            batch_size=provider.batch_size,
        )

    def _ask_train(
        self, provider: Provider, account: str, claims: list[Claim]
    ) -> dict[str, Outcome]:
        """Requests of `batch_size`, up to POLLER_TRAIN_PARALLEL of them in flight together (a
        wave), until the train's time is up; once the account is held back (hold, pace, open
        breaker) the rest of the train waits with it. Every request passes the account's gate
        before it leaves; answers are read in order, so a 429 or a timeout in one wave stops the
        next one.

        A bulk request that fails as a whole in a way one id could cause is bisected: its
        halves are asked at once (they are not cut short by the train's time), so a poison id
        ends up alone and its neighbours get their answers in O(log n) extra requests.
        """
        started = clock.now()
        outcomes: dict[str, Outcome] = {}
        run = _Run(calm=self._calm.get(account, False))  # as this process's last train ended
        queue: deque[tuple[list[Claim], _Bisect | None]] = deque(
            (chunk, None) for chunk in _chunks(claims, provider.batch_size)
        )
        while queue:
            wave, wait = self._wave(account, run, queue, started, bool(outcomes))
            splits: list[tuple[list[Claim], _Bisect]] = []
            cut, run.calm, run.slowed = False, True, False
            answers = self._send_wave(provider, account, wave)
            for (chunk, group), asked in zip(wave, answers, strict=True):
                cut = self._take(account, run, chunk, group, asked, outcomes, splits) or cut
            queue.extendleft(reversed(splits))
            if cut:
                outcomes |= self._hold_rest(account, claims, outcomes)
                break
            if wait is not None:
                rest = [c.tracking_id for c in claims if c.tracking_id not in outcomes]
                outcomes |= dict.fromkeys(rest, self._held(account, wait))
                break
            if not wave:
                break
        self._calm[account] = run.calm and not run.limited and run.pace is None
        self._close_run(account, run, outcomes)
        return outcomes

    def _wave(
        self,
        account: str,
        run: _Run,
        queue: deque[tuple[list[Claim], _Bisect | None]],
        started: float,
        answered: bool,
    ) -> tuple[list[tuple[list[Claim], _Bisect | None]], float | None]:
        """The requests to send together next, each admitted by the gate; and the wait, if the
        gate held the account back. Empty with no wait: the train's time is up.

        A wave is one request wide until an answer came back calm (the first request of an
        account in this process, and after any failure, 429 or budget running low; a train
        starts as the account's last one ended), and while the account is paced or was held
        lately: there a train asks one request after another, as before."""
        wave: list[tuple[list[Claim], _Bisect | None]] = []
        wide = run.calm and not run.limited and run.pace is None
        width = self.settings.train_parallel if wide else 1
        # A wave's requests leave together: before each, read the account's shared hold, so a
        # 429 another worker (or thread) just met stops this train too, not only its next wave.
        run.must_check = run.must_check or width > 1
        while queue and len(wave) < width:
            chunk, group = queue[0]
            late = clock.now() - started > self.settings.train_seconds
            suspect = _timed_out_before(chunk)
            if (group is None and (answered or wave) and late) or (suspect and wave):
                break
            wait = self._gate(account, run)
            if wait is not None:
                return wave, wait
            wave.append(queue.popleft())
            if suspect:  # asked alone: no answer waits on one that may trickle again
                break
        return wave, None

    def _send_wave(
        self, provider: Provider, account: str, wave: list[tuple[list[Claim], _Bisect | None]]
    ) -> list[_Asked]:
        """Send a wave's requests together: the first from this thread, the others from the
        process's request threads."""
        if not wave:
            return []
        ask = partial(self._ask_one, provider, account)
        others = [self._helpers().submit(ask, chunk) for chunk, _ in wave[1:]]
        return [ask(wave[0][0]), *(future.result() for future in others)]

    def _helpers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_REQUEST_THREADS, thread_name_prefix="request")
            return self._pool

    def _ask_one(self, provider: Provider, account: str, chunk: list[Claim]) -> _Asked:
        """One request, its answer (the budget it stated included).

        A 429 holds the account fleet-wide the moment it is read, from the thread that read
        it: its wave's other answers may take a while yet, and every other train of the
        account must stop now, not when this wave is over."""
        answer = self._ask(provider, account, chunk)
        waits, now = rules.stated_waits(answer.outcomes.values()), clock.now()
        until = now + max(waits) if waits else 0.0
        if waits and self.guard:
            self.guard.hold(account, until, now, reason="429")
        return answer, until

    def _take(
        self,
        account: str,
        run: _Run,
        chunk: list[Claim],
        group: _Bisect | None,
        asked: _Asked,
        outcomes: dict[str, Outcome],
        splits: list[tuple[list[Claim], _Bisect]],
    ) -> bool:
        """Read one answer of a wave; True if it timed out or failed to connect."""
        answer, held = asked
        answers, whole, budget = answer.outcomes, answer.error, answer.budget
        run.calls += 1
        run.calm = run.calm and rules.calm(answers, whole, budget, self.settings.train_parallel)
        if not isinstance(whole, errors.RateLimited):  # a 429 holds the account itself
            self._follow_budget(account, run, budget)
        split = _split(chunk, whole, group, run)
        if split:
            splits.extend(split)
            return False
        outcomes |= answers
        self._after_request(account, run, answers, group, whole, held, stated=budget is not None)
        return any(isinstance(o, errors.TransportError) for o in answers.values())

    def _gate(self, account: str, run: _Run) -> float | None:
        """Seconds the account must wait before the next request, or None to go.

        The shared hold and breaker are read at the start of a train, after a failure and
        every `_GATE_REFRESH` seconds, not before every request of a healthy run; an account
        held in the last minutes (it meets its provider's limit) is read before every request,
        so another worker's 429 stops this train at once.
        """
        now = clock.now()
        if run.hold_until > now:
            return run.hold_until - now
        if self.guard is None:
            return None
        if run.must_check or run.limited or now - run.checked_at >= _GATE_REFRESH:
            run.checked_at, run.must_check = now, False
            gate = self.guard.check(account, now)
            run.pace, run.limited = gate.pace, gate.limited
            if gate.wait is not None:
                return gate.wait
        if run.pace is not None:  # learned from 429s: one slot per request, fleet-wide
            wait = self.guard.take(account, now, run.pace)
            if wait is not None:
                return wait
        return self.guard.admit(account, now, breaker=False)

    def _hold_rest(
        self, account: str, claims: list[Claim], outcomes: dict[str, Outcome]
    ) -> dict[str, Outcome]:
        """After a request that timed out or failed to connect, the rest of the train waits a
        backoff step instead of queueing behind the same slow provider, thread after thread."""
        held = errors.Throttled(
            f"account {account!r} held back: a request just timed out or failed to connect",
            retry_after=self.settings.backoff_initial + self.rand() * 0.5,
        )
        return {c.tracking_id: held for c in claims if c.tracking_id not in outcomes}

    def _held(self, account: str, wait: float) -> errors.Throttled:
        return errors.Throttled(
            f"account {account!r} is held back (a provider's rate limit, its pace or an open "
            "breaker)",
            retry_after=wait + self.rand() * 0.5,
        )

    def _after_request(
        self,
        account: str,
        run: _Run,
        answers: dict[str, Outcome],
        group: _Bisect | None,
        whole: errors.ProviderError | None,
        held: float,
        *,
        stated: bool,
    ) -> None:
        """Hold the account on a 429 (until `held`, as `_ask_one` did); count the answer
        toward the breaker."""
        self._maybe_hold(account, run, held, stated=stated)
        if group is not None:  # counted when its bisection is over, when we know what it was
            group.requests.append(list(answers))
            group.answered = group.answered or whole is None
            return
        if not any(rules.counts_as_failure(o) for o in answers.values()):
            return
        run.must_check = True
        if self.guard:  # count a failure at once, with the answers before it
            if self.guard.record(account, clock.now(), calls=run.calls, failures=1):
                log.warning("breaker open account=%s", account)
            run.calls = 0

    def _follow_budget(self, account: str, run: _Run, budget: Budget | None) -> None:
        """Hold the account before its stated budget runs out (every answer, split ones too)."""
        if budget is None:
            return
        until = rules.budget_hold(budget.remaining, budget.limit, budget.reset_at, clock.now())
        if until is not None and until > run.hold_until:
            self._hold(account, run, until, "budget")

    def _maybe_hold(self, account: str, run: _Run, held: float, *, stated: bool) -> None:
        """A provider's 429 speaks for the whole account: every worker waits until its time
        (`held`, written when the answer was read; 0.0 for no 429). Where the provider
        states no budget, the 429 also slows the account's pace."""
        if not held:
            return
        self._note_hold(account, run, held, "429")  # the fleet-wide hold is written already
        if not stated and self.guard and not run.slowed:
            run.slowed = True
            run.pace = self.guard.slow_down(account, clock.now())
            log.warning("account paced account=%s rate=%.2f/s", account, run.pace)

    def _hold(self, account: str, run: _Run, until: float, reason: str) -> None:
        self._note_hold(account, run, until, reason)
        if self.guard:
            self.guard.hold(account, run.hold_until, clock.now(), reason=reason)

    def _note_hold(self, account: str, run: _Run, until: float, reason: str) -> None:
        """This train's own view of a hold, and the log line an operator reads."""
        run.hold_until = max(run.hold_until, until)
        level = logging.WARNING if reason == "429" else logging.INFO
        seconds = until - clock.now()
        log.log(level, "account held account=%s reason=%s seconds=%.1f", account, reason, seconds)

    def _close_run(self, account: str, run: _Run, outcomes: dict[str, Outcome]) -> None:
        """Settle what bisecting found, and count the run toward the breaker honestly: every
        request is a call; a poison id found alone is its export's refusal, not a failure."""
        failures = 0
        for group in run.groups:
            for tid in group.leaves:
                outcomes[tid] = rules.isolate(outcomes[tid], neighbours_answered=group.answered)
                if isinstance(outcomes[tid], errors.Poisoned):
                    log.warning("poison id isolated account=%s tracking_id=%s", account, tid)
            failures += sum(
                any(rules.counts_as_failure(outcomes[tid]) for tid in request)
                for request in group.requests
            )
        if (run.calls or failures) and self.guard:
            tripped = self.guard.record(account, clock.now(), calls=run.calls, failures=failures)
            if tripped:
                log.warning("breaker open account=%s", account)

    def _ask(self, provider: Provider, account: str, claims: list[Claim]) -> Answer:
        """One request for these claims: its answer, with an outcome per claim's tracking id
        (never an exception)."""
        ids = [c.fields["export_id"] for c in claims]
        started = clock.now()
        try:
            answer = provider.ask(ids)
        except Exception as exc:
            log.exception("adapter bug account=%s", account)
            whole = errors.BadResponse(f"adapter raised {type(exc).__name__}")
            answer = Answer(dict.fromkeys(ids, whole), whole)
        self.request_seconds.observe(account, clock.now() - started)
        by_id = answer.outcomes
        missing = errors.BadResponse(f"{provider.name} said nothing about this export")
        outcomes = {c.tracking_id: by_id.get(c.fields["export_id"], missing) for c in claims}
        return Answer(outcomes, answer.error, answer.budget)

    def _settle(self, claims: list[Claim], outcomes: dict[str, Outcome]) -> dict[str, str]:
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
                self._safe_dispatch(tid)
            elif plan.handoff:
                follow.append(plan)
        self._send_trains(follow)
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
        handoff = delay is not None and delay <= self.settings.enqueue_horizon
        sched = decision.next_poll_at
        if handoff and sched is not None:
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
        return _Plan(write, decision, delay, handoff)

    def _send_trains(self, plans: list[_Plan]) -> None:
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
        self._hand_off(plans[0].write.claim.fields["account"], messages)

    def _hand_off(self, account: str, messages: list[tuple[list[tuple[str, str]], float]]) -> None:
        """Send one account's poll messages (pairs, countdown) the backlog bound admits, in one
        round trip; the rest are parked in the schedule at their time, for the fair sweep."""
        if not messages:
            return
        now, s = clock.now(), self.settings
        due = [(pairs, now + countdown) for pairs, countdown in messages]
        admitted = self.store.admit(account, due, now=now, cap=s.backlog_max, grace=s.rescue_grace)
        for (pairs, countdown), ok in zip(messages, admitted, strict=True):
            if ok:
                self.send_poll(pairs, countdown)
        if not all(admitted):
            log.info(
                "polls parked by the backlog bound account=%s messages=%d",
                account,
                admitted.count(False),
            )

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

    def _safe_dispatch(self, tid: str) -> bool:
        """Dispatch without letting one callback hurt the others: a broker outage is retried
        by the sweep as it is; any other failure counts towards the dead-letter set."""
        try:
            return self.dispatch(tid)
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

    # -- the sweep ---------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        """Send due and lost polls, fairly across accounts and within the backlog bound;
        expire overdue exports; drain the outbox: work ~ due items."""
        report = SweepReport()
        now, s = clock.now(), self.settings
        self._sweep_fair(now, report)
        for _ in range(_SWEEP_ROUNDS):
            expired = self.store.due(now, now + s.rescue_grace, s.sweep_batch, s.rescue_grace)
            for tid in expired:
                report.expired += int(self._expire(tid, now))
            if len(expired) < s.sweep_batch:
                break
        for tid in self.store.outbox_due(now, s.sweep_batch):
            report.callbacks += int(self._safe_dispatch(tid))
        return report

    def _sweep_fair(self, now: float, report: SweepReport) -> None:
        """Fill the broker's free room (POLLER_BACKLOG_MAX less the ready messages) with due
        polls, each account getting its max-min fair share and served in turn."""
        s = self.settings
        ready, accounts = self.store.share_state(now, s.rescue_grace)
        sizes = {a: self._sweep_train(a) for a in accounts}
        demand = {a: math.ceil(due / sizes[a]) for a, (due, _) in accounts.items()}
        room = min(s.backlog_max - ready, s.sweep_batch)
        shares = policy.fair_shares(room, demand, {a: r for a, (_, r) in accounts.items()})
        if not shares:
            return
        wants = [(a, n * sizes[a], sizes[a]) for a, n in shares.items()]
        taken, expired = self.store.take_due(now, now + s.rescue_grace, s.rescue_grace, wants)
        for tid in expired:
            report.expired += int(self._expire(tid, now))
        by_account: dict[str, list[tuple[str, str]]] = {}
        for account, tid, token in taken:
            by_account.setdefault(account, []).append((tid, token))
        trains = [list(_chunks(p, sizes[a])) for a, p in by_account.items()]
        for train in policy.interleave(trains):
            self.send_poll(train, 0.0)
        report.enqueued += len(taken)

    def _sweep_train(self, account: str) -> int:
        """Exports per sweep message: the train this worker measured for the account (one
        request unmeasured: the poll takes the account's other due exports along anyway)."""
        try:
            return self._train_size(account, self.providers.get(account))
        except errors.ConfigurationError:
            return 1

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
    if decision.not_before is not None:
        fields["not_before"] = decision.not_before
    if decision.terminal:
        fields["finished_at"] = now
    return fields


def _timed_out(claim: Claim) -> bool:
    """Whether the export's last request timed out (or failed to connect)."""
    return claim.fields.get("error_kind") == errors.TransportError.kind


def _timed_out_before(chunk: list[Claim]) -> bool:
    return any(_timed_out(c) for c in chunk)


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ids(claims: list[Claim]) -> list[str]:
    return [c.tracking_id for c in claims]


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
