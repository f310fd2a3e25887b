"""The thread-safe job table: every waitress worker thread goes through one lock here.

A status request is one `poll` call: it counts the poll on each job it names, asks the fault plan
whether to fail, and only if not advances the jobs, all under the lock, so that two concurrent
polls of the same job can never both see "poll 3".
"""

from __future__ import annotations

import itertools
import secrets
import string
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from export_poller.providers.simulator.faults import Fault
from export_poller.providers.simulator.fields import SpecError, as_object
from export_poller.providers.simulator.jobs import Job, JobView
from export_poller.providers.simulator.options import Clock
from export_poller.providers.simulator.specs import build_job, normalize_id, provider_of

Chooser = Callable[[Sequence[tuple[Sequence[Fault], int]]], Fault | None]
"""Given (faults, poll number) of each polled job, the fault to answer with, if any."""

_ALNUM = string.ascii_letters + string.digits


class DuplicateJob(SpecError):
    """An explicit id already exists for that provider (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class Poll:
    """The outcome of one status request: a fault, or one view per requested id (None = 404)."""

    fault: Fault | None
    views: tuple[JobView | None, ...]


class JobStore:
    """Jobs keyed by (provider, id): ids are only unique per provider, as at the real ones."""

    def __init__(self, clock: Clock, owners: Mapping[str, frozenset[str]]) -> None:
        self._clock = clock
        self._owners = owners
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], Job] = {}
        self._cometly_ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._jobs)

    def create_many(self, specs: Sequence[object]) -> list[str | int]:
        """Add jobs all-or-nothing, so a bad spec in a bulk load leaves no half-built table."""
        now = self._clock()
        with self._lock:
            batch: set[tuple[str, str]] = set()
            jobs = [self._build(spec, now, batch) for spec in specs]
            for job in jobs:
                self._jobs[(job.provider, job.id)] = job
        return [job.public_id for job in jobs]

    def create(self, spec: object) -> str | int:
        return self.create_many([spec])[0]

    def poll(self, provider: str, ids: Sequence[str], credential: str, choose: Chooser) -> Poll:
        now = self._clock()
        with self._lock:
            jobs = self._visible(provider, ids, credential)
            polled = _unique(jobs)
            for job in polled:
                job.polls += 1
                job.last_poll_at = now
            fault = choose([(job.faults, job.polls) for job in polled])
            if fault is None:
                return Poll(None, _answer_all(jobs, polled, now))
            if fault.kind != "slow":
                for job in polled:
                    job.faulted += 1
            return Poll(fault, ())

    def poison(self, provider: str, ids: Sequence[str], credential: str) -> str | None:
        """How the request fails as a whole if it names a poison job (counted as its poll)."""
        now = self._clock()
        with self._lock:
            for job in _unique(self._visible(provider, ids, credential)):
                if job.poison is not None:
                    job.polls += 1
                    job.faulted += 1
                    job.last_poll_at = now
                    return job.poison
        return None

    def answer(self, provider: str, ids: Sequence[str], credential: str) -> Poll:
        """Answer an already counted poll (the end of a `slow` fault)."""
        now = self._clock()
        with self._lock:
            jobs = self._visible(provider, ids, credential)
            return Poll(None, _answer_all(jobs, _unique(jobs), now))

    def describe(self, provider: str, job_id: str) -> dict[str, Any] | None:
        try:
            key = (provider, normalize_id(provider, job_id))
        except SpecError:
            return None
        now = self._clock()
        with self._lock:
            job = self._jobs.get(key)
            return None if job is None else job.describe(now)

    def reset(self) -> None:
        with self._lock:
            self._jobs.clear()
            self._cometly_ids = itertools.count(1)

    def _visible(self, provider: str, ids: Sequence[str], credential: str) -> list[Job | None]:
        """Another tenant's job looks exactly like a missing one (Cometly's other-Space rule)."""
        jobs: list[Job | None] = []
        for job_id in ids:
            job = self._jobs.get((provider, job_id))
            jobs.append(job if job is not None and job.visible_to(credential) else None)
        return jobs

    def _build(self, data: object, now: float, batch: set[tuple[str, str]]) -> Job:
        spec = as_object(data, "job")
        provider = provider_of(spec)
        requested = spec.get("id")
        if requested is None:
            job_id = self._new_id(provider, batch)
        else:
            job_id = normalize_id(provider, requested)
            if (provider, job_id) in self._jobs or (provider, job_id) in batch:
                raise DuplicateJob(f"{provider} job {job_id!r} already exists")
        batch.add((provider, job_id))
        return build_job(spec, job_id=job_id, now=now, owners=self._owners)

    def _new_id(self, provider: str, batch: set[tuple[str, str]]) -> str:
        while True:
            candidate = self._generate(provider)
            if (provider, candidate) not in self._jobs and (provider, candidate) not in batch:
                return candidate

    def _generate(self, provider: str) -> str:
        """Ids shaped like each provider's own, so adapters' id checks accept them."""
        if provider == "cometly":
            return str(next(self._cometly_ids))
        if provider == "chaossearch":
            return str(uuid.uuid4())
        if provider == "saymon":
            return secrets.token_hex(12)
        return "".join(secrets.choice(_ALNUM) for _ in range(32))


def _unique(jobs: Sequence[Job | None]) -> list[Job]:
    """A bulk request naming one id twice still counts as one poll of that job."""
    seen: dict[str, Job] = {}
    for job in jobs:
        if job is not None:
            seen.setdefault(job.id, job)
    return list(seen.values())


def _answer_all(
    jobs: Sequence[Job | None], polled: Sequence[Job], now: float
) -> tuple[JobView | None, ...]:
    views = {job.id: job.answer(now) for job in polled}
    return tuple(None if job is None else views[job.id] for job in jobs)
