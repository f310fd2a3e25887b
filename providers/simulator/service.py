"""The status-request flow shared by all providers, in the order a real provider applies it:

    authenticate -> rate limit -> read ids -> count the poll -> fault? -> advance and answer

A rate-limited or malformed request never reaches the jobs; a faulted one is counted as a poll
(so `polls: [2]` means "the second request for this job") but does not advance the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

from export_poller.providers.simulator.dialects import Dialect
from export_poller.providers.simulator.faults import Fault, FaultPlan
from export_poller.providers.simulator.limits import LimitState, RateLimiter
from export_poller.providers.simulator.options import Clock
from export_poller.providers.simulator.stats import RESET, UNAUTHENTICATED, Stats
from export_poller.providers.simulator.store import JobStore
from export_poller.providers.simulator.wsgi import DropConnection, Request, Response

GARBAGE = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center></body></html>"
)
_ERROR_FAULTS = frozenset({"500", "503", "404", "401"})


def garbage() -> Response:
    """A 200 whose body is not JSON, as an intermediary's error page would be."""
    return Response(200, GARBAGE, [("Content-Type", "text/html")])


class StatusService:
    """One flow for every provider, so checks run in the same order and a fault costs the same
    everywhere; dialects only supply the provider-specific pieces."""

    def __init__(
        self,
        store: JobStore,
        faults: FaultPlan,
        limiter: RateLimiter,
        stats: Stats,
        clock: Clock,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._faults = faults
        self._limiter = limiter
        self._stats = stats
        self._clock = clock
        self._sleep = sleep

    def handle(self, dialect: Dialect, request: Request) -> Response:
        credential = dialect.authenticate(request)
        if isinstance(credential, Response):
            self._stats.record(dialect.name, UNAUTHENTICATED, credential.status)
            return credential
        try:
            response = self._authorized(dialect, request, credential)
        except DropConnection:
            self._stats.record(dialect.name, credential, RESET)
            raise
        self._stats.record(dialect.name, credential, response.status)
        self._stats.log(dialect.name, credential, self._clock(), response)
        return response

    def _authorized(self, dialect: Dialect, request: Request, credential: str) -> Response:
        now = self._clock()
        limit = self._limiter.hit(dialect.name, credential, now)
        if limit is not None and limit.exceeded:
            return dialect.throttled(limit, now)
        ids = dialect.requested_ids(request)
        response = (
            ids if isinstance(ids, Response) else self._poll(dialect, request, credential, ids)
        )
        if limit is not None and response.status != 429:
            response.headers.extend(dialect.limit_headers(limit))
        return response

    def _poll(
        self, dialect: Dialect, request: Request, credential: str, ids: Sequence[str]
    ) -> Response:
        choose = partial(
            self._faults.choose, dialect.name, allow_redirect=dialect.can_redirect(request)
        )
        poison = self._store.poison(dialect.name, ids, credential)
        if poison is not None:
            return garbage() if poison == "garbage" else dialect.error(int(poison))
        poll = self._store.poll(dialect.name, ids, credential, choose)
        if poll.fault is None:
            return dialect.render(request, poll.views, self._clock())
        if poll.fault.kind == "slow":
            self._sleep(poll.fault.delay_s)
            answered = self._store.answer(dialect.name, ids, credential)
            return dialect.render(request, answered.views, self._clock())
        return self._fault(dialect, request, poll.fault)

    def _fault(self, dialect: Dialect, request: Request, fault: Fault) -> Response:
        if fault.kind == "reset":
            raise DropConnection(f"{dialect.name}: injected connection reset")
        if fault.kind == "garbage":
            return garbage()
        if fault.kind == "redirect":
            return dialect.redirect(request)
        if fault.kind in _ERROR_FAULTS:
            return dialect.error(int(fault.kind))
        if fault.kind != "429":
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        now = self._clock()
        configured = self._limiter.limit_for(dialect.name)
        limit = LimitState(
            limit=configured.limit if configured is not None else 0,
            remaining=0,
            reset_at=now + fault.retry_after,
            exceeded=True,
        )
        return dialect.throttled(limit, now)
