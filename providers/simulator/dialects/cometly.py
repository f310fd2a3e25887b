"""Cometly `GET /public-api/v1/events/exports/{id}` with a Bearer API key.

Export ids are integers. Another Space's export answers 404, exactly like a missing one. A
completed export carries a presigned download URL that expires 15 minutes after the request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from collections.abc import Sequence
from typing import Any

from export_poller.providers.simulator.dialects.base import SingleJobDialect, bearer_token, iso
from export_poller.providers.simulator.jobs import JobView
from export_poller.providers.simulator.limits import LimitState
from export_poller.providers.simulator.wsgi import Request, Response

PREFIX = "/public-api/v1/events/exports/"
URL_LIFETIME_S = 15 * 60
_PROGRESS = "Export is being processed. Please check back in a few minutes."
_FAILED = (
    "Export failed. Please try again in a few minutes. If the problem persists, contact support."
)
_ERRORS = {
    400: "Bad request.",
    401: "Unauthenticated. Missing or invalid API key.",
    404: "Export not found.",
    429: "Too many requests. Rate limit exceeded.",
    500: "Server error.",
    503: "Service unavailable.",
}
_URL_KEY = b"provider-simulator-presign"
_STATUS = {
    "pending": "queued",
    "running": "processing",
    "completed": "completed",
    "failed": "failed",
}


def download_url(job_id: str, now: float) -> str:
    """A plausible presigned S3 URL; its signature is fake but differs per id and request."""
    name = uuid.uuid5(uuid.NAMESPACE_URL, f"cometly:{job_id}")
    stamp = time_stamp(now)
    signature = hmac.new(_URL_KEY, f"{name}:{stamp}".encode(), hashlib.sha256).hexdigest()
    return (
        f"https://sim-cometly-exports.s3.amazonaws.com/exports/{name}.json.gz"
        f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={stamp}"
        f"&X-Amz-Expires={URL_LIFETIME_S}&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}"
    )


def time_stamp(now: float) -> str:
    return iso(now).replace("-", "").replace(":", "")


class Cometly(SingleJobDialect):
    name = "cometly"
    method = "GET"

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = frozenset(tokens)

    def matches(self, path: str) -> bool:
        return path.startswith(PREFIX)

    def authenticate(self, request: Request) -> str | Response:
        token = bearer_token(request)
        return token if token is not None and token in self._tokens else self.error(401)

    def requested_ids(self, request: Request) -> list[str] | Response:
        job_id = self.path_id(request.path, PREFIX)
        if job_id is None or not job_id.isdecimal() or not job_id.isascii():
            return self.error(404)
        return [str(int(job_id))]

    def error(self, status: int, message: str | None = None) -> Response:
        return Response.json(status, {"message": message or _ERRORS.get(status, "Error.")})

    def limit_headers(self, limit: LimitState) -> list[tuple[str, str]]:
        return [
            ("X-RateLimit-Limit", str(limit.limit)),
            ("X-RateLimit-Remaining", str(limit.remaining)),
        ]

    def throttled(self, limit: LimitState, now: float) -> Response:
        response = self.error(429)
        response.headers.extend(
            [
                ("Retry-After", str(limit.retry_after(now))),
                ("X-RateLimit-Reset", str(math.ceil(limit.reset_at))),
                *self.limit_headers(limit),
            ]
        )
        return response

    def body(self, view: JobView, request: Request, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "export_id": int(view.id),
            "status": _STATUS[view.state],
            "created_at": iso(view.created_at),
        }
        if view.state == "completed":
            finished = view.finished_at if view.finished_at is not None else now
            body["completed_at"] = iso(finished)
            body["download_url"] = download_url(view.id, now)
            body["expires_at"] = iso(now + URL_LIFETIME_S)
        else:
            body["message"] = _FAILED if view.state == "failed" else _PROGRESS
        return body
