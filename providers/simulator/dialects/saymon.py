"""SAYMON `GET /node/api/bulk/{id}/status` with HTTP basic auth.

SAYMON only says `{"finished": bool}`: a failed operation is just finished, so a poller cannot
tell failure from success here. Its error bodies wrap a JSON document inside `message` as text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from export_poller.providers.simulator.dialects.base import (
    SingleJobDialect,
    basic_credentials,
    password_matches,
)
from export_poller.providers.simulator.jobs import JobView
from export_poller.providers.simulator.wsgi import Request, Response

PREFIX = "/node/api/bulk/"
SUFFIX = "/status"
_CHALLENGE = ("WWW-Authenticate", 'Basic realm="SAYMON"')


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class Saymon(SingleJobDialect):
    name = "saymon"
    method = "GET"

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def matches(self, path: str) -> bool:
        return path.startswith(PREFIX) and path.endswith(SUFFIX)

    def authenticate(self, request: Request) -> str | Response:
        credentials = basic_credentials(request)
        if credentials is None or not password_matches(self._users, *credentials):
            return self.error(401)
        return credentials[0]

    def requested_ids(self, request: Request) -> list[str] | Response:
        job_id = self.path_id(request.path, PREFIX, SUFFIX)
        return [job_id] if job_id is not None else self.error(404)

    def error(self, status: int, message: str | None = None) -> Response:
        text = message or _phrase(status)
        inner = json.dumps({"code": status, "message": text}, separators=(",", ":"))
        headers = [_CHALLENGE] if status == 401 else []
        return Response.json(status, {"message": inner}, headers)

    def body(self, view: JobView, request: Request, now: float) -> dict[str, Any]:
        return {"finished": view.terminal}
