"""One settings object with explicit precedence: init kwargs > environment > `.env` file > defaults.

Accounts are nested: `POLLER_ACCOUNTS__ACME__PROVIDER=cometly` defines the account `acme`; or
`POLLER_ACCOUNTS` holds them all as JSON, for deployments that pass one variable. Names are
case-insensitive and stored lower-case. Empty variables count as unset. Credentials are
`SecretStr`, so they never show in a repr, a log line or an exception; they are read with
`.get_secret_value()` only where a request is signed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

_RATE = re.compile(r"^\s*\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)

PositiveSeconds = Annotated[float, Field(gt=0)]


class AccountSettings(BaseModel):
    """One set of credentials at one provider; exports are always polled with their own account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    base_url: str | None = None
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    region: str | None = None
    rate_limit: str | None = None

    @field_validator("provider")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL, got {redact_url(value)!r}")
        return value.strip().rstrip("/")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        return _redacted_args(super().__repr_args__(), ("base_url",))

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and not _RATE.match(value):
            raise ValueError(f"must look like '30/minute' or '1000 per 5 minutes', got {value!r}")
        return value


class Settings(BaseSettings):
    """Everything the service reads at start-up; see the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="POLLER_",
        env_nested_delimiter="__",
        case_sensitive=False,
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None
    key_prefix: str = "ep"
    queue: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")] = (
        "export-poller"
    )
    callback_queue: (
        Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")] | None
    ) = None
    backoff_initial: PositiveSeconds = 10.0
    backoff_factor: Annotated[float, Field(ge=1.0)] = 2.0
    backoff_max: PositiveSeconds = 240.0
    backoff_floor: Annotated[float, Field(ge=0)] = 1.0
    sweep_interval: PositiveSeconds = 5.0
    default_timeout: PositiveSeconds = 24 * 3600.0
    enqueue_horizon: PositiveSeconds = 10.0
    lease_seconds: PositiveSeconds = 120.0
    visibility_timeout: PositiveSeconds = 3600.0
    rescue_grace: PositiveSeconds = 30.0
    http_connect_timeout: PositiveSeconds = 5.0
    http_read_timeout: PositiveSeconds = 30.0
    # Wall clock for a whole request, headers and body (default: the read timeout): a
    # trickling answer never trips the read timeout, which applies to each socket read.
    http_total_timeout: PositiveSeconds | None = None
    max_response_bytes: Annotated[int, Field(gt=0)] = 2 * 1024 * 1024
    record_ttl: PositiveSeconds = 7 * 24 * 3600.0
    sweep_batch: Annotated[int, Field(gt=0)] = 1000
    confirm_refusals: Annotated[int, Field(ge=1)] = 3
    # A callback that fails to dispatch this many times is moved to the dead-letter set.
    callback_attempts: Annotated[int, Field(ge=1)] = 5
    train_max: Annotated[int, Field(ge=1)] = 50
    train_seconds: PositiveSeconds = 1.0
    # Most poll messages ready in the broker (and not yet started) across the fleet: each is
    # about POLLER_TRAIN_SECONDS of one thread's work; the rest of the due work waits in Redis.
    backlog_max: Annotated[int, Field(ge=1)] = 64
    breaker_window: PositiveSeconds = 30.0
    breaker_min_calls: Annotated[int, Field(ge=1)] = 10
    breaker_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    breaker_cooldown: PositiveSeconds = 10.0
    breaker_max_cooldown: PositiveSeconds = 300.0
    accounts: dict[str, AccountSettings] = Field(default_factory=dict)

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("accounts", mode="before")
    @classmethod
    def _lower_names(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(name).lower(): account for name, account in value.items()}
        return value

    @model_validator(mode="after")
    def _timeouts_fit_lease(self) -> Settings:
        if self.http_connect_timeout + self.request_deadline >= self.lease_seconds:
            raise ValueError(
                "POLLER_HTTP_CONNECT_TIMEOUT + POLLER_HTTP_TOTAL_TIMEOUT must be less than "
                "POLLER_LEASE_SECONDS"
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        return _redacted_args(super().__repr_args__(), ("redis_url", "broker_url"))

    @property
    def request_deadline(self) -> float:
        return self.http_total_timeout or self.http_read_timeout

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url


def redact_url(url: str) -> str:
    """Hide a password in a Redis URL before it is logged or printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def _redacted_args(
    args: Iterable[tuple[str | None, Any]], urls: tuple[str, ...]
) -> Iterator[tuple[str | None, Any]]:
    """A repr's fields with the passwords of URL fields masked (SecretStr masks the rest)."""
    for name, value in args:
        yield name, redact_url(value) if name in urls and isinstance(value, str) else value


class InvalidSettings(ValueError):
    """A setting is wrong; the message names the environment variable, never its value."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load once per process: start-up fails here, naming the bad setting, before any work."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"POLLER_{'__'.join(str(p) for p in err['loc']).upper() or '<settings>'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidSettings("bad setting " + "; ".join(problems)) from None
    except SettingsError as exc:
        raise InvalidSettings(f"bad setting: {exc}") from None


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
