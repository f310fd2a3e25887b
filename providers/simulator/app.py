"""The WSGI application: one object owning the job table, faults, limits and counters, and
routing each request to a provider dialect or to the control API."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from export_poller.providers.simulator.control import PREFIX as CONTROL_PREFIX
from export_poller.providers.simulator.control import Control
from export_poller.providers.simulator.dialects import Dialect, build_dialects
from export_poller.providers.simulator.faults import FaultPlan, parse_global
from export_poller.providers.simulator.limits import RateLimiter
from export_poller.providers.simulator.options import PROVIDERS, SimulatorOptions
from export_poller.providers.simulator.service import StatusService
from export_poller.providers.simulator.stats import Stats
from export_poller.providers.simulator.store import JobStore
from export_poller.providers.simulator.wsgi import BadRequest, Request, Response, read_request

MAX_STATUS_BODY = 1024 * 1024
MAX_CONTROL_BODY = 64 * 1024 * 1024

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class SimulatorApp:
    """Callable as a WSGI app; safe for waitress's worker threads (state is behind locks)."""

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.options = options or SimulatorOptions()
        clock = self.options.clock
        owners = {name: self.options.credentials_for(name) for name in PROVIDERS}
        self.store = JobStore(clock, owners)
        self.faults = FaultPlan(self.options.seed)
        self.limiter = RateLimiter(
            {
                "cometly": self.options.cometly_limit,
                "biodatacatalyst": self.options.sbg_limit,
                "cgc": self.options.sbg_limit,
            }
        )
        self.stats = Stats()
        self.dialects: tuple[Dialect, ...] = build_dialects(self.options)
        self.status = StatusService(self.store, self.faults, self.limiter, self.stats, clock)
        self.control = Control(self.store, self.faults, self.limiter, self.stats)
        self._load_script()

    def _load_script(self) -> None:
        """Jobs and global faults given at start (`--script`); a bad spec fails start-up."""
        if self.options.jobs:
            self.store.create_many(self.options.jobs)
        if self.options.faults is not None:
            self.faults.configure(*parse_global(self.options.faults))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response = self.respond(environ)
        response.headers.append(("Content-Length", str(len(response.body))))
        start_response(response.status_line, response.headers)
        return [response.body]

    def respond(self, environ: dict[str, Any]) -> Response:
        control = environ.get("PATH_INFO", "").startswith(CONTROL_PREFIX)
        try:
            request = read_request(environ, MAX_CONTROL_BODY if control else MAX_STATUS_BODY)
        except BadRequest as exc:
            return Response.json(exc.status, {"error": str(exc)})
        if control:
            return self.control.handle(request)
        return self.dispatch(request)

    def dispatch(self, request: Request) -> Response:
        for dialect in self.dialects:
            if dialect.matches(request.path):
                if request.method != dialect.method:
                    response = dialect.error(405, f"use {dialect.method} {request.path}")
                    response.headers.append(("Allow", dialect.method))
                    return response
                return self.status.handle(dialect, request)
        return Response.json(404, {"error": f"no simulated endpoint at {request.path}"})
