"""ChaosSearch `POST /bulkexport/status`: SigV4 (service s3), partitions as progress, 307s.

ChaosSearch sits behind S3-style gateways that may answer 307; a redirected request carries
`?redirected=1`, which is part of the signed query, so a client must re-sign after following.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from export_poller.providers.simulator.dialects.base import SingleJobDialect
from export_poller.providers.simulator.jobs import JobView, State
from export_poller.providers.simulator.sigv4 import SignatureRejected, SigV4Verifier
from export_poller.providers.simulator.wsgi import BadRequest, Request, Response

PATH = "/bulkexport/status"
BUCKET = "sim-export-bkt"
_MESSAGES: dict[State, str] = {
    "pending": "Running",
    "running": "Running",
    "completed": "Success",
    "failed": "Failed",
}
_ERRORS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Bulk export not found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def partition_counts(state: State, progress: float, total: int) -> dict[str, int]:
    """Completed partitions grow with progress; a failed export ends with some failed ones."""
    if state == "completed":
        return {"active": 0, "completed": total, "failed": 0, "pending": 0}
    if state == "failed":
        failed = max(1, total // 5)
        return {"active": 0, "completed": total - failed, "failed": failed, "pending": 0}
    if state == "pending":
        return {"active": 0, "completed": 0, "failed": 0, "pending": total}
    completed = min(total - 1, int(total * progress))
    active = min(total - completed, max(1, total // 4))
    return {
        "active": active,
        "completed": completed,
        "failed": 0,
        "pending": total - completed - active,
    }


def _timing(view: JobView, now: float) -> dict[str, int]:
    started = view.started_at if view.started_at is not None else now
    ended = view.finished_at if view.finished_at is not None else now
    queue_ms = int((started - view.created_at) * 1000)
    run_ms = int(max(0.0, ended - started) * 1000) if view.started_at is not None else 0
    return {
        "queue_time_ms": queue_ms,
        "retry_time_ms": 0,
        "run_time_ms": run_ms,
        "total_time_ms": queue_ms + run_ms,
    }


class ChaosSearch(SingleJobDialect):
    name = "chaossearch"
    method = "POST"

    def __init__(self, verifier: SigV4Verifier) -> None:
        self._verifier = verifier

    def matches(self, path: str) -> bool:
        return path == PATH

    def authenticate(self, request: Request) -> str | Response:
        try:
            return self._verifier.verify(request)
        except SignatureRejected as exc:
            return Response.json(403, {"code": exc.code, "message": exc.message})

    def requested_ids(self, request: Request) -> list[str] | Response:
        try:
            body = request.json()
        except BadRequest as exc:
            return self.error(400, str(exc))
        job_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(job_id, str) or not job_id:
            return self.error(400, 'the body must be {"id": "<tracking uid>"}')
        return [job_id]

    def error(self, status: int, message: str | None = None) -> Response:
        return Response.json(status, {"message": message or _ERRORS.get(status, "Error")})

    def can_redirect(self, request: Request) -> bool:
        return "redirected" not in dict(parse_qsl(request.query))

    def redirect(self, request: Request) -> Response:
        location = f"{request.origin}{PATH}?redirected=1"
        return Response.json(307, {"message": "Temporary Redirect"}, [("Location", location)])

    def body(self, view: JobView, request: Request, now: float) -> dict[str, Any]:
        counts = partition_counts(view.state, view.progress, view.partitions)
        terminal = view.terminal
        return {
            "auth": "api_access",
            "exportedFilesPath": f"{BUCKET}/exports/{view.id}",
            "message": _MESSAGES[view.state],
            "searchRequest": _search_request(view),
            "status": {
                "partitions": {
                    **{name: {"count": count} for name, count in counts.items()},
                    "retries": 0,
                    "total": {"count": view.partitions},
                },
                "queryCompleted": terminal,
                "queryID": _query_id(view.id),
                "scheduled": True,
                "termination": terminal,
                "timing": _timing(view, now),
            },
            "totalFilesExported": counts["completed"],
        }


@lru_cache(maxsize=4096)
def _query_id(job_id: str) -> str:
    """Stable per job, like the real query id, and cached: uuid5 is costly at thousands/s."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chaossearch:{job_id}"))


def _search_request(view: JobView) -> dict[str, Any]:
    return {
        "_type": "chaossumo.query.BulkExportQuery.Request.Search.Elastic",
        "dateTime": int(view.created_at * 1000),
        "options": {
            "bucket": f"{BUCKET}/exports",
            "compression": "gzip",
            "fileFormat": "JSON",
            "id": view.id,
            "unitFileSize": 104857600,
        },
        "queryName": f"sim-export-{view.id[:8]}",
    }
