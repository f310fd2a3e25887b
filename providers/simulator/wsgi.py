"""The few WSGI primitives the simulator needs, kept minimal because every request pays for them
(the simulator must sustain thousands of requests per second on two cores)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from waitress.channel import ClientDisconnected

_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
_JSON = ("Content-Type", "application/json")
_UNPREFIXED = {"CONTENT_TYPE", "CONTENT_LENGTH"}


class BadRequest(Exception):
    """The request cannot be read at all (body too large, invalid JSON); answered with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class DropConnection(ClientDisconnected):
    """Raised by the app to close the socket without any answer (the `reset` fault).

    Waitress treats `ClientDisconnected` from an application as "nothing more to send" and
    closes the connection without writing a response, which is exactly a provider that hangs
    up mid-request. Under another WSGI server this would surface as a 500 instead.
    """


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    environ: Mapping[str, Any]
    body: bytes

    def header(self, name: str) -> str | None:
        key = name.upper().replace("-", "_")
        value = self.environ.get(key if key in _UNPREFIXED else "HTTP_" + key)
        return value if isinstance(value, str) else None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise BadRequest(f"body is not JSON: {exc}") from exc

    @property
    def origin(self) -> str:
        """scheme://host[:port] as the client addressed us, for absolute `Location` headers."""
        host = self.header("Host") or (
            f"{self.environ.get('SERVER_NAME', '127.0.0.1')}:{self.environ.get('SERVER_PORT')}"
        )
        return f"{self.environ.get('wsgi.url_scheme', 'http')}://{host}"


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, body, [_JSON, *headers])

    @property
    def status_line(self) -> str:
        return _STATUS_LINES.get(self.status) or f"{self.status} Unknown"


def read_request(environ: Mapping[str, Any], max_body: int) -> Request:
    """Read the whole body up front: status requests are tiny, and the cap keeps abuse cheap."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise BadRequest("invalid Content-Length") from exc
    if length > max_body:
        raise BadRequest(f"body is over {max_body} bytes", status=413)
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    raw_path: str = environ.get("PATH_INFO") or "/"
    # PEP 3333 hands over the path as latin-1 decoded bytes; ids may be UTF-8.
    path = raw_path.encode("latin-1").decode("utf-8", "replace")
    return Request(
        method=environ.get("REQUEST_METHOD", "GET").upper(),
        path=path,
        query=environ.get("QUERY_STRING", ""),
        environ=environ,
        body=body,
    )
