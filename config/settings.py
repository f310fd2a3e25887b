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
from urllib.parse import urlsplit

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

from export_poller.config import brokers

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
            raise ValueError(f"must be an http(s) URL, got {brokers.redact_url(value)!r}")
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

    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    broker_url: str | None = Field(None, repr=False)
    redis_sentinel_master: str | None = None
    broker_quorum_queues: bool = False
    broker_consumer_timeout: PositiveSeconds = 1800.0
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
    # A sweep costs a few Redis calls (it follows due work, not tracked exports), and it is
    # the only way parked polls reach the broker: every second keeps a bound of twice the
    # threads enough to feed them.
    sweep_interval: PositiveSeconds = 1.0
    default_timeout: PositiveSeconds = 24 * 3600.0
    enqueue_horizon: PositiveSeconds = 10.0
    lease_seconds: PositiveSeconds = 120.0
    visibility_timeout: PositiveSeconds = 300.0
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
    # Requests of one train in flight together (a wave): a train no longer waits on the sum of
    # its latencies, so one message carries ~8x the polls at 100-300 ms answers (a worker's
    # CPU per poll: 1.61 ms at 1, 0.89 ms at 8; bench/latency.py). A wave re-reads the
    # account's hold first, and is one request wide until answers come back calm; against a
    # limit nobody states, the first 429 still finds the rest of its wave already sent.
    train_parallel: Annotated[int, Field(ge=1, le=64)] = 8
    # Most poll messages ready in the broker (and not yet started) across the fleet: each is
    # about POLLER_TRAIN_SECONDS of one thread's work; the rest of the due work waits in Redis.
    # A new message waits behind the ready ones (a queue is first in, first out), so the bound
    # is a wait: 2 x a worker's 16 threads is about 2 s of their work (bench/overload.py).
    backlog_max: Annotated[int, Field(ge=1)] = 32
    breaker_window: PositiveSeconds = 30.0
    breaker_min_calls: Annotated[int, Field(ge=1)] = 10
    breaker_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    breaker_cooldown: PositiveSeconds = 10.0
    breaker_max_cooldown: PositiveSeconds = 300.0
    heartbeat_interval: PositiveSeconds = Field(
        10.0,
        description=(
            "Seconds between a worker's heartbeats: it publishes the accounts it serves (names "
            "and providers, never a secret) to the roster, where track_export looks an account "
            "up. A worker that misses three heartbeats (killed, say) drops out of the roster."
        ),
    )
    accounts: dict[str, AccountSettings] = Field(
        default_factory=dict,
        description=(
            "Workers only: the accounts a worker polls, with their credentials. A process that "
            "only tracks exports needs none: it asks the roster."
        ),
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        return brokers.check_url(value, brokers.REDIS_SCHEMES)

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        return None if value is None else brokers.check_url(value, brokers.BROKER_SCHEMES)

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

    @property
    def request_deadline(self) -> float:
        return self.http_total_timeout or self.http_read_timeout

    @model_validator(mode="after")
    def _broker_fits_work(self) -> Settings:
        """A message is held unacked for at most its countdown plus one poll; the broker must
        not take it back sooner (Redis: visibility timeout; RabbitMQ: consumer_timeout)."""
        brokers.check_hold(self.held_seconds, self.broker_kind, self.hold_limit)
        if self.redis_sentinel_master is None and "sentinel" in (
            urlsplit(self.redis_url).scheme,
            urlsplit(self.broker).scheme,
        ):
            raise ValueError("a sentinel:// URL needs POLLER_REDIS_SENTINEL_MASTER")
        return self

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_kind(self) -> str:
        """`amqp` (RabbitMQ) or `redis`: what the Celery app is configured for."""
        return brokers.kind(self.broker)

    @property
    def held_seconds(self) -> float:
        """The longest a worker holds one of our messages unacked: a countdown (never longer
        than the enqueue horizon) plus one poll (bounded by its lease)."""
        return self.enqueue_horizon + self.lease_seconds

    @property
    def hold_limit(self) -> float:
        if self.broker_kind == "amqp":
            return self.broker_consumer_timeout
        return self.visibility_timeout


def _redacted_args(
    args: Iterable[tuple[str | None, Any]], urls: tuple[str, ...]
) -> Iterator[tuple[str | None, Any]]:
    """A repr's fields with the passwords of URL fields masked (SecretStr masks the rest)."""
    for name, value in args:
        yield name, brokers.redact_url(value) if name in urls and isinstance(value, str) else value


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
