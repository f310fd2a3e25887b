"""Seven Bridges platforms: BioDataCatalyst (one export per GET) and CGC (bulk POST).

Both authenticate with `X-SBG-Auth-Token`, put `X-RateLimit-*` headers on every answer
(`Reset` is a Unix time), answer 429 with code 1000 over the limit and 503 with code 0 during
maintenance. Error bodies are `{status, code, message, more_info}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from export_poller.providers.simulator.dialects.base import Dialect, SingleJobDialect, iso
from export_poller.providers.simulator.jobs import JobView
from export_poller.providers.simulator.limits import LimitState
from export_poller.providers.simulator.wsgi import BadRequest, Request, Response

EXPORTS_PREFIX = "/v2/storage/exports/"
BULK_PATH = "/v2/bulk/storage/exports/get"
BULK_MAX_ITEMS = 100
MORE_INFO = "https://docs.sevenbridges.com/docs/api-status-codes"
# Codes the platform documents (0 maintenance, 1000 rate limit); the others are the simulator's.
_CODES = {400: 400, 401: 401, 404: 9000, 429: 1000, 500: 500, 503: 0}
_MESSAGES = {
    400: "Bad request.",
    401: "Unauthorized.",
    404: "Export job not found.",
    429: "Rate limit exceeded! Please wait for the next limit reset before trying again.",
    500: "Internal server error.",
    503: "Service is temporarily unavailable due to maintenance.",
}
_FAILURE = {
    "status": 409,
    "code": 9107,
    "message": "Location on volume already contains a file. Check the documentation.",
    "more_info": f"{MORE_INFO}#9107",
}


def error_object(status: int, message: str | None = None) -> dict[str, Any]:
    code = _CODES.get(status, status)
    return {
        "status": status,
        "code": code,
        "message": message or _MESSAGES.get(status, "Error."),
        "more_info": f"{MORE_INFO}#{code}",
    }


def resource(view: JobView, origin: str, *, with_result: bool) -> dict[str, Any]:
    """One export job as both platforms show it; CGC adds the exported file as `result`."""
    job: dict[str, Any] = {
        "href": f"{origin}{EXPORTS_PREFIX}{view.id}",
        "id": view.id,
        "state": view.state.upper(),
        "source": {"file": f"sim-file-{view.id[:12]}"},
        "destination": {"volume": "sim/output", "location": f"exports/{view.id}.vcf"},
        "properties": {"sse_algorithm": "AES256", "aws_storage_class": "STANDARD"},
        "overwrite": False,
    }
    if view.started_at is not None:
        job["started_on"] = iso(view.started_at)
    if view.finished_at is not None:
        job["finished_on"] = iso(view.finished_at)
    if view.state == "failed":
        job["error"] = dict(_FAILURE)
    elif view.state == "completed" and with_result:
        job["result"] = _result_file(view)
    return job


def _result_file(view: JobView) -> dict[str, Any]:
    stamp = iso(view.finished_at if view.finished_at is not None else view.created_at)
    return {
        "href": f"https://cgc-api.sbgenomics.com/v2/files/sim{view.id[:21]}",
        "id": f"sim{view.id[:21]}",
        "name": f"{view.id}.vcf",
        "size": 36433,
        "project": "sim/my-project",
        "created_on": stamp,
        "modified_on": stamp,
        "storage": {"type": "VOLUME", "volume": "sim/output", "location": f"exports/{view.id}.vcf"},
        "origin": {},
        "tags": [],
        "metadata": {},
    }


class _SevenBridges(Dialect):
    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = frozenset(tokens)

    def authenticate(self, request: Request) -> str | Response:
        token = request.header("X-SBG-Auth-Token")
        return token if token is not None and token in self._tokens else self.error(401)

    def error(self, status: int, message: str | None = None) -> Response:
        return Response.json(status, error_object(status, message))

    def limit_headers(self, limit: LimitState) -> list[tuple[str, str]]:
        return [
            ("X-RateLimit-Limit", str(limit.limit)),
            ("X-RateLimit-Remaining", str(limit.remaining)),
            ("X-RateLimit-Reset", str(math.ceil(limit.reset_at))),
        ]

    def throttled(self, limit: LimitState, now: float) -> Response:
        response = self.error(429)
        response.headers.extend(self.limit_headers(limit))
        return response


class BioDataCatalyst(_SevenBridges, SingleJobDialect):
    name = "biodatacatalyst"
    method = "GET"

    def matches(self, path: str) -> bool:
        return path.startswith(EXPORTS_PREFIX)

    def requested_ids(self, request: Request) -> list[str] | Response:
        job_id = self.path_id(request.path, EXPORTS_PREFIX)
        return [job_id] if job_id is not None else self.error(404)

    def body(self, view: JobView, request: Request, now: float) -> dict[str, Any]:
        return resource(view, request.origin, with_result=False)


class CGC(_SevenBridges):
    name = "cgc"
    method = "POST"

    def matches(self, path: str) -> bool:
        return path == BULK_PATH

    def requested_ids(self, request: Request) -> list[str] | Response:
        try:
            body = request.json()
        except BadRequest as exc:
            return self.error(400, str(exc))
        ids = body.get("export_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            return self.error(400, "export_ids must be a list of export ids")
        if not 1 <= len(ids) <= BULK_MAX_ITEMS:
            return self.error(400, f"export_ids must hold 1 to {BULK_MAX_ITEMS} ids")
        return ids

    def render(self, request: Request, views: Sequence[JobView | None], now: float) -> Response:
        origin = request.origin
        items = [
            {"resource": resource(view, origin, with_result=True)}
            if view is not None
            else {"error": error_object(404)}
            for view in views
        ]
        return Response.json(200, {"items": items})
