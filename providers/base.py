"""The adapter interface and the one HTTP flow every provider shares.

A provider subclass is a template: it says how to ask (`status_request`, `auth`) and how to read
the answer (`parse`, optionally `describe_error`). This module does the rest the same way for all
of them: a pooled session per account, connect/read timeouts, a cap on the body size, same-host
redirects only (custom auth headers such as `X-SBG-Auth-Token` must never reach another host),
and the mapping of HTTP failures onto `export_poller.providers.errors`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import requests
from pydantic import BaseModel, ValidationError
from requests.auth import AuthBase

from export_poller.config.accounts import AccountSettings
from export_poller.config.brokers import redact_url
from export_poller.config.settings import Settings
from export_poller.providers import errors, transport
from export_poller.providers.answer import Answer, read_budget, retry_after_seconds
from export_poller.providers.models import ExportStatus, Outcome
from export_poller.providers.redaction import Redactor

log = logging.getLogger("export_poller.http")

MAX_EXPORT_ID_BYTES = 1024
# C0 and C1 controls, and the bidi controls that make a printed id read as another one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 3
_DOT_SEGMENTS = frozenset({".", ".."})

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class StatusRequest:
    """What to send: a method, a path below the account's base URL, and an optional JSON body."""

    method: str
    path: str
    json: Any = None


def path_segment(export_id: str) -> str:
    """Percent-encode an id so that it stays one path segment (`../../admin` cannot climb out).

    `.` and `..` are refused rather than encoded: requests turns `%2E` back into `.` before
    sending, so no encoding keeps them from being read as "this" or "parent" directory.
    """
    if export_id in _DOT_SEGMENTS:
        raise errors.InvalidExportId(f"export id must not be {export_id!r}")
    return quote(export_id, safe="")


def validate_answer(model: type[_M], body: Any, who: str) -> _M:
    """Check an answer's shape; any mismatch is a `BadResponse` naming the provider and field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise errors.BadResponse(
            f"{who} answer is not the documented JSON: {where}: {first['msg']}"
        ) from exc


class Provider(ABC):
    """One provider account: credentials, a pooled session, and the request/answer shapes."""

    name: ClassVar[str]
    default_base_url: ClassVar[str | None] = None
    batch_size: ClassVar[int] = 1
    id_pattern: ClassVar[re.Pattern[str] | None] = None
    required_credentials: ClassVar[tuple[str, ...]] = ()
    """Account settings without which no request can be made (`base_url` when no default)."""
    headers: ClassVar[Mapping[str, str]] = {}
    """Headers the provider's documents require on every request, whatever its method."""

    def __init__(self, account_name: str, account: AccountSettings, settings: Settings) -> None:
        self.account_name = account_name
        self.account = account
        self.timeout = (settings.http_connect_timeout, settings.http_read_timeout)
        self.total_timeout = settings.request_deadline
        self.max_bytes = settings.max_response_bytes
        self._base = self._base_url(account)
        self._auth = self.auth()
        self.redactor = Redactor.for_account(account)
        self.session = transport.session_for(self.base_url)
        self.session.headers.update(self.headers)
        # Everything but the path, body and signature is the same for every request of an
        # account: prepared once here, copied per request (see `_prepare`).
        self._template = self.session.prepare_request(requests.Request("GET", self.base_url))
        self._prefix = self._template.url.rstrip("/") if self._template.url else self.base_url
        self._ours = self._prefix + "/"  # a URL we built: the prefix and a quoted path

    @property
    def base_url(self) -> str:
        """Read-only: every request is a copy of one prepared from it at construction."""
        return self._base

    def __repr__(self) -> str:
        url = redact_url(self.base_url)
        return f"<{type(self).__name__} account={self.account_name!r} base_url={url!r}>"

    # -- what a provider module writes -------------------------------------------------------

    @abstractmethod
    def auth(self) -> AuthBase:
        """Build the per-account request signer once; it holds the only copy of the secret."""

    @abstractmethod
    def status_request(self, export_ids: Sequence[str]) -> StatusRequest:
        """The request asking for these ids (exactly one unless `batch_size` > 1)."""

    @abstractmethod
    def parse(self, body: Any, export_ids: Sequence[str]) -> dict[str, Outcome]:
        """Read a 2xx JSON body into one outcome per id; raise `BadResponse` if it is off-spec."""

    def describe_error(self, body: Any) -> str | None:
        """The provider's own words for an error body, when it has a documented shape."""
        if isinstance(body, Mapping) and isinstance(body.get("message"), str):
            return str(body["message"])
        return None

    def error_for(self, status: int, headers: Mapping[str, str], body: Any) -> errors.ProviderError:
        """Map a non-2xx answer; providers refine it (Seven Bridges' maintenance 503)."""
        return map_http_error(self, status, headers, body)

    # -- the shared flow ---------------------------------------------------------------------

    @classmethod
    def check_account(cls, account_name: str, account: AccountSettings) -> None:
        """Refuse, naming the setting, an account that misses what every request needs."""
        needed = [*cls.required_credentials]
        if cls.default_base_url is None:
            needed.insert(0, "base_url")
        for name in needed:
            if getattr(account, name) is None:
                raise errors.ConfigurationError(
                    f"account {account_name!r} ({cls.name}) needs "
                    f"POLLER_ACCOUNTS__{account_name.upper()}__{name.upper()}"
                )

    @classmethod
    def validate_export_id(cls, export_id: object) -> str:
        """Reject ids no provider could hold before anything is stored."""
        if not isinstance(export_id, str):
            raise errors.InvalidExportId(
                f"export id must be a string, got {type(export_id).__name__}"
            )
        if not export_id.strip():
            raise errors.InvalidExportId("export id must not be empty")
        try:
            encoded = export_id.encode()
        except UnicodeEncodeError:
            raise errors.InvalidExportId("export id must be valid Unicode text") from None
        if len(encoded) > MAX_EXPORT_ID_BYTES:
            raise errors.InvalidExportId(f"export id is over {MAX_EXPORT_ID_BYTES} bytes")
        if _CONTROL.search(export_id):
            raise errors.InvalidExportId(
                "export id must not contain control or bidirectional formatting characters"
            )
        if export_id in _DOT_SEGMENTS:
            raise errors.InvalidExportId(f"export id must not be {export_id!r}")
        if cls.id_pattern is not None and not cls.id_pattern.fullmatch(export_id):
            raise errors.InvalidExportId(
                f"{cls.name} export ids must match {cls.id_pattern.pattern!r}, got {export_id!r}"
            )
        return export_id

    def fetch(self, export_id: str) -> ExportStatus:
        """Ask for one export; raise a `ProviderError` for anything but a usable status."""
        outcome = self.fetch_many([export_id])[export_id]
        if isinstance(outcome, errors.ProviderError):
            raise outcome
        return outcome

    def fetch_many(self, export_ids: Sequence[str]) -> dict[str, Outcome]:
        """Ask for up to `batch_size` exports in one request; errors of the whole call raise."""
        answer = self.ask(export_ids)
        if answer.error is not None:
            raise answer.error
        return answer.outcomes

    def ask(self, export_ids: Sequence[str]) -> Answer:
        """One request for up to `batch_size` exports, and everything its answer said: an
        outcome per id, the failure of the request as a whole (never raised), and the budget
        its headers stated (kept even when the status or the body is an error)."""
        request = self.status_request(export_ids)
        budget = None
        try:
            with transport.deadline(self.total_timeout) as watch:
                try:
                    response = self._send(request)
                    budget = read_budget(response.headers)
                    status, headers, body = (
                        response.status_code,
                        response.headers,
                        self._read(response),
                    )
                except errors.TransportError:
                    if not watch.expired:
                        raise
                    late = f"{self.name} did not answer within {self.total_timeout:g} s"
                    raise errors.TransportError(late) from None
            outcomes = self._outcomes(status, headers, body, export_ids)
        except errors.ProviderError as exc:
            # Kept per export until the commit, a traceback and chain would hold this
            # request's frames and body buffer in a cycle only the cyclic GC frees.
            exc.__traceback__ = exc.__cause__ = exc.__context__ = None
            return Answer(dict.fromkeys(export_ids, exc), exc, budget)
        return Answer(outcomes, None, budget)

    def _outcomes(
        self, status: int, headers: Mapping[str, str], body: bytes, export_ids: Sequence[str]
    ) -> dict[str, Outcome]:
        if status >= 300:
            raise self.error_for(status, headers, self.redactor.clean(_json_or_none(body)))
        try:
            decoded = json.loads(body)
        except ValueError:
            raise errors.BadResponse(
                f"{self.name} answered {status} with a body that is not JSON"
            ) from None
        return self.parse(self.redactor.clean(decoded), export_ids)

    def _send(self, request: StatusRequest) -> requests.Response:
        url = self._prefix + request.path
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._request(request.method, url, request.json)
            if response.status_code not in _REDIRECTS:
                return response
            url = self._same_host_location(url, response)
        raise errors.BadResponse(f"{self.name} redirected more than {_MAX_REDIRECTS} times")

    def _prepare(self, method: str, url: str, body: Any) -> requests.PreparedRequest:
        """`Session.request` merges the session's headers, params, hooks, cookies and proxy
        settings into every request: 15% of a worker's CPU at 200 ms answers (by profile),
        for a result that only differs by path, body and signature. Our own URLs (the base
        URL, prepared once, and a path the adapter quoted) start from a copy of the prepared
        base request; a redirect's Location, which we did not build, is prepared in full."""
        if not url.startswith(self._ours):
            request = requests.Request(method, url, json=body, auth=self._auth)
            return self.session.prepare_request(request)
        prepared = self._template.copy()
        prepared.method, prepared.url = method, url
        prepared.prepare_body(None, None, body)
        prepared.prepare_auth(self._auth)
        return prepared

    def _request(self, method: str, url: str, body: Any) -> requests.Response:
        started = time.monotonic()
        try:
            response = self.session.send(
                self._prepare(method, url, body),
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
                proxies=self.session.proxies,  # found once for the base URL (session_for)
            )
        except requests.Timeout as exc:
            raise errors.TransportError(f"{self.name} did not answer in time") from exc
        except requests.RequestException as exc:
            raise errors.TransportError(
                f"{self.name} connection failed: {type(exc).__name__}"
            ) from exc
        if log.isEnabledFor(logging.DEBUG):  # its arguments cost more than the call
            log.debug(
                "%s %s -> %s in %.3fs",
                method,
                urlsplit(url).path,
                response.status_code,
                time.monotonic() - started,
            )
        return response

    def _same_host_location(self, url: str, response: requests.Response) -> str:
        """Follow a redirect on the same origin only; re-signing happens on the next send."""
        target = urljoin(url, response.headers.get("Location", ""))
        response.close()
        old, new = urlsplit(url), urlsplit(target)
        if (old.scheme, old.netloc) != (new.scheme, new.netloc):
            raise errors.BadResponse(
                f"{self.name} redirected to another host; credentials withheld"
            )
        return target

    def _read(self, response: requests.Response) -> bytes:
        """Read at most `max_bytes`: a provider bug must not fill a worker's memory."""
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > self.max_bytes:
                    raise errors.BadResponse(f"{self.name} answer is over {self.max_bytes} bytes")
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise errors.TransportError(
                f"{self.name} answer was cut off: {type(exc).__name__}"
            ) from exc
        finally:
            response.close()
        return b"".join(chunks)

    def _base_url(self, account: AccountSettings) -> str:
        base = account.base_url or self.default_base_url
        if not base:
            raise errors.ConfigurationError(
                f"account {self.account_name!r} ({self.name}) needs a base URL: set "
                f"POLLER_ACCOUNTS__{self.account_name.upper()}__BASE_URL"
            )
        return base.rstrip("/")

    def redact(self, text: str) -> str:
        """Mask this account's secrets, in every spelling, in provider-supplied text."""
        return self.redactor.text(text)

    def require(self, field: str) -> str:
        """A credential from the account, or a configuration error naming the missing setting."""
        value = getattr(self.account, field)
        if value is None:
            raise errors.ConfigurationError(
                f"account {self.account_name!r} ({self.name}) needs "
                f"POLLER_ACCOUNTS__{self.account_name.upper()}__{field.upper()}"
            )
        return value if isinstance(value, str) else str(value.get_secret_value())


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def map_http_error(
    provider: Provider, status: int, headers: Mapping[str, str], body: Any
) -> errors.ProviderError:
    """One mapping for all: 429 waits, 5xx retries, 401/403/404/4xx are refusals to confirm."""
    said = provider.describe_error(body)
    detail = f": {provider.redact(said)}" if said else ""
    if status == 429:
        wait = retry_after_seconds(headers)
        return errors.RateLimited(
            f"{provider.name} rate limit reached{detail}",
            retry_after=wait if wait is not None else 60.0,
        )
    if status >= 500:
        return errors.ServerError(f"{provider.name} answered {status}{detail}", status_code=status)
    if status in (401, 403):
        return errors.CredentialsRefused(
            f"{provider.name} refused the credentials of account {provider.account_name!r} "
            f"({status}){detail}",
            status_code=status,
        )
    if status == 404:
        return errors.NotFound(
            f"{provider.name} does not know this export{detail}", status_code=404
        )
    if 400 <= status < 500:
        return errors.Rejected(
            f"{provider.name} rejected the request ({status}){detail}", status_code=status
        )
    return errors.BadResponse(
        f"{provider.name} answered an unexpected {status}", status_code=status
    )
