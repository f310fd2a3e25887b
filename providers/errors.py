"""What can go wrong when asking a provider, as a tree the engine can act on.

    Exception
     ├── ProviderError              an answer (or its absence) the engine must act on
     │    ├── RetryLater            transient: poll again after backoff
     │    │    ├── TransportError   timeout, refused or reset connection
     │    │    ├── ServerError      5xx; `Maintenance` is Seven Bridges' 503 with code 0
     │    │    ├── BadResponse      not the documented JSON, too large, or an odd redirect
     │    │    ├── Misconfigured    this worker cannot build the account (missing, no credential)
     │    │    └── RateLimited      429: wait `retry_after` seconds, then poll again
     │    │         └── Throttled   held back before sending: the account's hold, pace or breaker
     │    └── Refused               the provider says no; ends the export once confirmed
     │         ├── NotFound         404
     │         ├── CredentialsRefused  401/403 (names the account, never the secret)
     │         ├── Rejected         any other 4xx
     │         └── Poisoned         alone, this id fails a bulk request its neighbours pass
     └── ConfigurationError         bad input at the boundary: nothing is tracked
          ├── UnknownProvider
          ├── UnknownAccount
          └── InvalidExportId

Messages are built here from status codes and provider bodies, never from request headers, so no
credential can reach a log line or a stored record through an exception.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every adapter failure; `kind` is the short name stored in records and metrics."""

    kind = "provider_error"

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "message": self.message, "status_code": self.status_code}


class RetryLater(ProviderError):
    kind = "retry_later"


class TransportError(RetryLater):
    kind = "transport"


class ServerError(RetryLater):
    kind = "server_error"


class Maintenance(ServerError):
    kind = "maintenance"


class BadResponse(RetryLater):
    kind = "bad_response"


class Misconfigured(RetryLater):
    """This worker lacks the account or one of its settings; another worker may have it."""

    kind = "misconfigured"


class RateLimited(RetryLater):
    """The provider asked us to wait; the export is polled no sooner than `retry_after` seconds."""

    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, status_code: int | None = 429) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = max(0.0, retry_after)

    def as_dict(self) -> dict[str, object]:
        return {**super().as_dict(), "retry_after": self.retry_after}


class Throttled(RateLimited):
    """Held back before sending: the account's shared rate limit, or its breaker is open."""

    kind = "throttled"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after, status_code=None)


class Refused(ProviderError):
    kind = "refused"


class NotFound(Refused):
    kind = "not_found"


class CredentialsRefused(Refused):
    kind = "credentials_refused"


class Rejected(Refused):
    kind = "rejected"


class Poisoned(Refused):
    """Bisecting a failed bulk request found this id to be the one that fails it: it is
    refused on its own (and confirmed like any refusal) while its neighbours go on."""

    kind = "poisoned"


class ConfigurationError(ValueError):
    """Raised at the boundary (`track_export`, the CLI, settings) before anything is stored."""


class UnknownProvider(ConfigurationError):
    pass


class UnknownAccount(ConfigurationError):
    pass


class InvalidExportId(ConfigurationError):
    pass
