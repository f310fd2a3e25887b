"""One request of a train: the account's adapter, the threads a wave's requests leave from, and
how long the account's requests take (which sizes its trains)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from typing import Any

from export_poller import clock
from export_poller.account import rules
from export_poller.account.guard import AccountGuard
from export_poller.config.settings import Settings
from export_poller.providers import errors
from export_poller.providers.answer import Answer, Budget
from export_poller.providers.base import Provider
from export_poller.providers.models import Outcome
from export_poller.providers.registry import get_provider_class
from export_poller.store import Claim

log = logging.getLogger("export_poller.poll")

# Threads that send the second and later requests of a wave, shared by every train of the
# process and started only as needed: at most (a worker's threads) x (POLLER_TRAIN_PARALLEL - 1)
# are ever busy at once.
_REQUEST_THREADS = 256
# One request's answer, as the train reads it: an outcome per tracking id, the request's error
# as a whole, the budget it stated, and the time its 429 holds the account until (0.0: none).
Asked = tuple[dict[str, Outcome], errors.ProviderError | None, Budget | None, float]


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
        cls = get_provider_class(settings.provider)
        cls.check_account(account, settings)  # names the missing setting, never a value
        return cls(account, settings, self.settings)


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


class RequestPool:
    """Sends a wave's requests together (a lone one from the train's own thread, a wider wave
    from the process's request threads). Each request's 429 holds the account fleet-wide from
    the thread that read it."""

    def __init__(self, guard: AccountGuard | None) -> None:
        self.guard = guard
        self.times = RequestTimes()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def send_wave(
        self,
        provider: Provider,
        account: str,
        wave: Sequence[tuple[list[Claim], Any]],
        patience: float | None = None,
        early: Callable[[dict[int, Asked]], None] | None = None,
    ) -> list[Asked]:
        """Send a wave's requests together and return their answers in the wave's order.

        A lone request is sent from this thread. A wider wave goes to the request threads, so
        that if some answers are still out after `patience` seconds (one trickling answer may
        take the whole request deadline), `early` is handed those already in, by position,
        from this thread: their exports need not wait on a neighbour's slow answer."""
        if not wave:
            return []
        ask = partial(self.ask, provider, account)
        if len(wave) == 1:
            return [ask(wave[0][0])]
        futures = [self._threads().submit(ask, chunk) for chunk, _ in wave]
        if early is not None:
            done, pending = wait(futures, timeout=patience)
            if pending and done:
                early({i: f.result() for i, f in enumerate(futures) if f in done})
        return [future.result() for future in futures]

    def _threads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_REQUEST_THREADS, thread_name_prefix="request")
            return self._pool

    def ask(self, provider: Provider, account: str, claims: list[Claim]) -> Asked:
        """One request for these claims: its answer, with an outcome per claim's tracking id
        (never an exception) and the budget it stated.

        A 429 holds the account fleet-wide the moment it is read, from the thread that read
        it: its wave's other answers may take a while yet, and every other train of the
        account must stop now, not when this wave is over."""
        ids = [c.fields["export_id"] for c in claims]
        started = clock.now()
        try:
            answer = provider.ask(ids)
        except Exception as exc:
            log.exception("adapter bug account=%s", account)
            whole = errors.BadResponse(f"adapter raised {type(exc).__name__}")
            answer = Answer(dict.fromkeys(ids, whole), whole)
        now = clock.now()
        self.times.observe(account, now - started)
        by_id = answer.outcomes
        missing = errors.BadResponse(f"{provider.name} said nothing about this export")
        outcomes = {c.tracking_id: by_id.get(c.fields["export_id"], missing) for c in claims}
        waits = rules.stated_waits(outcomes.values())
        until = now + max(waits) if waits else 0.0
        if waits and self.guard:
            self.guard.hold(account, until, now, reason="429")
        return outcomes, answer.error, answer.budget, until
