"""What a provider dialect must say: how it authenticates, which ids a request names, how its
answers and its errors look. The request flow itself is shared (`..service`)."""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from export_poller.providers.simulator.jobs import JobView
from export_poller.providers.simulator.limits import LimitState
from export_poller.providers.simulator.wsgi import Request, Response


def iso(timestamp: float) -> str:
    """The providers' ISO 8601 UTC form, second precision: 2024-01-15T10:30:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def bearer_token(request: Request) -> str | None:
    scheme, _, token = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def password_matches(users: Mapping[str, str], user: str, password: str) -> bool:
    expected = users.get(user)
    return expected is not None and hmac.compare_digest(expected.encode(), password.encode())


class Dialect(ABC):
    """One provider's status API. Methods return a `Response` instead of raising, because an
    error answer is the normal product of a simulator, not an exceptional one."""

    name: ClassVar[str]
    method: ClassVar[str]

    @abstractmethod
    def matches(self, path: str) -> bool:
        """Whether this path belongs to this provider's status endpoint (any method)."""

    @abstractmethod
    def authenticate(self, request: Request) -> str | Response:
        """The credential that made the request (token, user or access key), or the refusal."""

    @abstractmethod
    def requested_ids(self, request: Request) -> list[str] | Response:
        """The job ids the request asks about, or the answer to a malformed request."""

    @abstractmethod
    def render(self, request: Request, views: Sequence[JobView | None], now: float) -> Response:
        """The success answer; a None view is an unknown (or another tenant's) id."""

    @abstractmethod
    def error(self, status: int, message: str | None = None) -> Response:
        """An error answer in this provider's documented error shape."""

    def throttled(self, limit: LimitState, now: float) -> Response:
        response = self.error(429)
        response.headers.append(("Retry-After", str(limit.retry_after(now))))
        return response

    def limit_headers(self, limit: LimitState) -> list[tuple[str, str]]:
        """Rate-limit headers carried by every non-429 answer; none unless documented."""
        return []

    def can_redirect(self, request: Request) -> bool:
        return False

    def redirect(self, request: Request) -> Response:
        return self.error(500, f"{self.name} does not redirect")


class SingleJobDialect(Dialect):
    """A provider whose status endpoint names exactly one job."""

    def render(self, request: Request, views: Sequence[JobView | None], now: float) -> Response:
        view = views[0]
        if view is None:
            return self.error(404)
        return Response.json(200, self.body(view, request, now))

    @abstractmethod
    def body(self, view: JobView, request: Request, now: float) -> dict[str, Any]:
        """The JSON answer for one job."""

    @staticmethod
    def path_id(path: str, prefix: str, suffix: str = "") -> str | None:
        """The single path segment between `prefix` and `suffix`, if the path has that shape."""
        if not path.startswith(prefix) or not path.endswith(suffix):
            return None
        job_id = path[len(prefix) : len(path) - len(suffix)]
        return job_id if job_id and "/" not in job_id else None
