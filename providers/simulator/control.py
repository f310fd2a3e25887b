"""The control API under `/_sim/`, used by tests, the demo and benchmarks (no auth: local only).

    POST /_sim/jobs                      job spec -> 201 {"id", "provider"}
    POST /_sim/jobs/bulk                 [spec, ...] -> 201 {"ids": [...], "count"}
    GET  /_sim/jobs/{provider}/{id}      -> the job's state and bookkeeping
    GET  /_sim/stats                     -> per provider and per credential counters
    POST /_sim/faults                    {"rate", "kinds", "providers", ...} -> the setting
    GET  /_sim/faults                    -> the setting
    POST /_sim/limits                    {"provider": "cgc", "limit": "30/10"} -> the limits
                                         ("0" or "off" removes it; reset restores start-up's)
    GET  /_sim/requests[?provider=cgc]   -> every request's arrival time, credential, status
                                         and, for a 429, the time it said to wait for
    POST /_sim/reset                     forget jobs, counters, windows, limits, global faults
    GET  /_sim/health                    -> {"ok": true}

Errors are `{"error": "..."}` with 400 (bad spec), 404, 405 or 409 (duplicate id).

A job spec (unknown fields are refused):

    {"provider": "cometly",            # chaossearch saymon biodatacatalyst cgc cometly
     "id": 123,                         # optional; generated in the provider's shape if absent
     "outcome": "completed",            # or "failed"
     "pending_polls": 1, "running_polls": 1,      # by polls (the default), or
     "duration_s": 30,                            # by time: pending for 10%, terminal after
     "partitions": 10,                  # ChaosSearch progress units
     "owner": "sim-token",              # only this credential sees the job (others get 404)
     "poison": "400",                   # cgc only: any bulk request naming this job fails
                                        # as a whole: "400", "500" or "garbage" (off-spec 200)
     "faults": [{"kind": "503", "polls": [1, 2]},            # at these 1-based polls, or
                {"kind": "429", "rate": 0.3, "retry_after": 2},  # with a probability
                {"kind": "slow", "polls": [3], "delay_s": 1.5}]}

Fault kinds: 429 503 500 404 401 garbage slow reset redirect (ChaosSearch only). Global faults:
`{"rate": 0.3, "kinds": [...], "providers": [...], "retry_after": 1, "delay_s": 1, "seed": 7}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from export_poller.providers.simulator.faults import FaultPlan, parse_global
from export_poller.providers.simulator.fields import SpecError, as_object, get_str
from export_poller.providers.simulator.limits import RateLimiter
from export_poller.providers.simulator.options import PROVIDERS, RateLimit
from export_poller.providers.simulator.stats import Stats
from export_poller.providers.simulator.store import DuplicateJob, JobStore
from export_poller.providers.simulator.wsgi import BadRequest, Request, Response

PREFIX = "/_sim/"
_JOB_PREFIX = "/_sim/jobs/"

Handler = Callable[[Request], Response]


def _error(status: int, message: object) -> Response:
    return Response.json(status, {"error": str(message)})


class Control:
    """Shares the app's store, faults, limiter and counters: a reset here resets what the
    provider endpoints see."""

    def __init__(
        self, store: JobStore, faults: FaultPlan, limiter: RateLimiter, stats: Stats
    ) -> None:
        self._store = store
        self._faults = faults
        self._limiter = limiter
        self._stats = stats
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/_sim/jobs"): self._create_job,
            ("POST", "/_sim/jobs/bulk"): self._create_jobs,
            ("GET", "/_sim/stats"): self._stats_view,
            ("POST", "/_sim/faults"): self._set_faults,
            ("GET", "/_sim/faults"): self._faults_view,
            ("POST", "/_sim/limits"): self._set_limit,
            ("GET", "/_sim/requests"): self._requests,
            ("POST", "/_sim/reset"): self._reset,
            ("GET", "/_sim/health"): self._health,
        }

    def handle(self, request: Request) -> Response:
        try:
            return self._route(request)(request)
        except DuplicateJob as exc:
            return _error(409, exc)
        except SpecError as exc:
            return _error(400, exc)
        except BadRequest as exc:
            return _error(exc.status, exc)

    def _route(self, request: Request) -> Handler:
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            return handler
        if request.path.startswith(_JOB_PREFIX) and request.path.count("/") == 4:
            return self._job if request.method == "GET" else self._not_allowed
        if any(path == request.path for _, path in self._routes):
            return self._not_allowed
        return self._not_found

    def _create_job(self, request: Request) -> Response:
        spec = request.json()
        job_id = self._store.create(spec)
        return Response.json(201, {"id": job_id, "provider": spec["provider"]})

    def _create_jobs(self, request: Request) -> Response:
        specs = request.json()
        if isinstance(specs, dict) and "jobs" in specs:
            specs = specs["jobs"]
        if not isinstance(specs, list):
            raise SpecError('the body must be a list of job specs (or {"jobs": [...]})')
        ids = self._store.create_many(specs)
        return Response.json(201, {"ids": ids, "count": len(ids)})

    def _job(self, request: Request) -> Response:
        provider, _, job_id = request.path[len(_JOB_PREFIX) :].partition("/")
        described = self._store.describe(provider, job_id)
        if described is None:
            return _error(404, f"no {provider} job {job_id!r}")
        return Response.json(200, described)

    def _stats_view(self, request: Request) -> Response:
        snapshot: dict[str, Any] = self._stats.snapshot(self._limiter.snapshot())
        snapshot["jobs"] = len(self._store)
        snapshot["faults"] = self._faults.current.as_dict()
        return Response.json(200, snapshot)

    def _set_faults(self, request: Request) -> Response:
        faults, seed = parse_global(request.json())
        self._faults.configure(faults, seed)
        return Response.json(200, faults.as_dict())

    def _faults_view(self, request: Request) -> Response:
        return Response.json(200, self._faults.current.as_dict())

    def _set_limit(self, request: Request) -> Response:
        spec = as_object(request.json(), "limits")
        provider, text = get_str(spec, "provider"), get_str(spec, "limit")
        if provider not in PROVIDERS or text is None:
            raise SpecError(f"give a provider among {list(PROVIDERS)} and a limit like '30/10'")
        try:
            limit = RateLimit.parse(text)
        except ValueError as exc:
            raise SpecError(str(exc)) from exc
        self._limiter.configure(provider, limit)
        return Response.json(200, self._limiter.limits())

    def _requests(self, request: Request) -> Response:
        provider = parse_qs(request.query).get("provider", [None])[0]
        return Response.json(200, {"requests": self._stats.requests(provider)})

    def _reset(self, request: Request) -> Response:
        self._store.reset()
        self._stats.reset()
        self._limiter.reset()
        self._faults.reset()
        return Response.json(200, {"reset": True})

    def _health(self, request: Request) -> Response:
        return Response.json(200, {"ok": True, "jobs": len(self._store)})

    def _not_found(self, request: Request) -> Response:
        return _error(404, f"no control endpoint {request.path}")

    def _not_allowed(self, request: Request) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.path}")
