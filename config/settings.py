"""One settings object with explicit precedence: init kwargs > environment > `.env` file > the
profile's defaults (`POLLER_PROFILE`) > defaults.

Accounts are nested: `POLLER_ACCOUNTS__ACME__PROVIDER=cometly` defines the account `acme`; or
`POLLER_ACCOUNTS` holds them all as JSON, for deployments that pass one variable. Names are
case-insensitive and stored lower-case. Empty variables count as unset. Credentials are
`SecretStr`, so they never show in a repr, a log line or an exception; they are read with
`.get_secret_value()` only where a request is signed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from export_poller.config import brokers
from export_poller.config.accounts import AccountSettings

__all__ = ["AccountSettings", "InvalidSettings", "Settings", "get_settings", "reset_settings"]

PositiveSeconds = Annotated[float, Field(gt=0)]
QUEUE_PATTERN = r"^[A-Za-z0-9_.:-]+$"
QueueName = Annotated[str, Field(min_length=1, max_length=200, pattern=QUEUE_PATTERN)]

# The defaults `POLLER_PROFILE=trial` puts in place of production's: a poll every few seconds,
# so a local trial sees its callbacks in seconds rather than minutes, and a poll or callback
# lost to a stopped worker is rescued in seconds too. A setting given explicitly still wins.
PROFILES: dict[str, dict[str, float]] = {
    "production": {},
    "trial": {
        "backoff_initial": 0.5,
        "backoff_max": 3.0,
        "backoff_floor": 0.2,
        "rescue_grace": 6.0,
        "lease_seconds": 45.0,
        "http_read_timeout": 5.0,
        "heartbeat_interval": 1.0,
    },
}
_TRIAL = ", ".join(f"POLLER_{k.upper()}={v:g}" for k, v in PROFILES["trial"].items())


class Settings(BaseSettings):
    """Everything the service reads at start-up. Every field's description is the user docs'
    settings reference (docs/hooks.py renders it), so a new field needs one."""

    model_config = SettingsConfigDict(
        env_prefix="POLLER_",
        env_nested_delimiter="__",
        case_sensitive=False,
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        repr=False,
        description="The store, where every tracked export lives (redis://, rediss://, unix://, "
        "sentinel://). Passwords are allowed and always shown redacted. Every process of the "
        "fleet and every application that tracks exports uses the same one.",
    )
    broker_url: str | None = Field(
        None,
        repr=False,
        description="The Celery broker: RabbitMQ (amqp://, amqps://) or Redis (as the store). "
        "Unset: the store's Redis is the broker too. Set it to use RabbitMQ, which loses no "
        "message when a worker is killed.",
    )
    redis_sentinel_master: str | None = Field(
        None,
        description="The Redis master's name; required with a sentinel:// URL, which follows a "
        "failover.",
    )
    broker_quorum_queues: bool = Field(
        False,
        description="RabbitMQ: declare this service's queue as a replicated quorum queue. "
        "Countdowns then round up to whole seconds; delete an existing classic queue of the "
        "same name first.",
    )
    broker_consumer_timeout: PositiveSeconds = Field(
        1800.0,
        description="RabbitMQ: the server's consumer_timeout in seconds. Start-up refuses "
        "settings a poll could outlast; lower it here if your server's timeout is shorter.",
    )
    key_prefix: str = Field(
        "ep",
        description="Prefix of every Redis key this service writes. Give each fleet sharing a "
        "Redis its own.",
    )
    profile: Literal["production", "trial"] = Field(
        "production",
        description=(
            "Which defaults the other settings take. `production`: the defaults listed here. "
            f"`trial`, for trying the poller locally (the demo uses it): {_TRIAL}, so callbacks "
            "arrive in seconds; it polls a provider every few seconds, too often for "
            "production. A setting set explicitly wins over either."
        ),
    )
    queue: QueueName = Field(
        "export-poller",
        description="This service's Celery queue: polls, sweeps and exports.track. "
        "Applications that send exports.track by name send it here.",
    )
    callback_queue: QueueName | None = Field(
        None,
        description="The queue a callback goes to when its signature names none: your own "
        "workers' queue. Unset: this service's queue, whose workers discard tasks they lack.",
    )
    backoff_initial: PositiveSeconds = Field(
        10.0, description="Seconds: the first backoff ceiling (full jitter below it)."
    )
    backoff_factor: Annotated[float, Field(ge=1.0)] = Field(
        2.0, description="How much the backoff ceiling grows after each poll."
    )
    backoff_max: PositiveSeconds = Field(
        240.0,
        description="Seconds: the longest wait the poller chooses, backoff and progress-aware "
        "waits alike (a provider's Retry-After may be longer). Lower it if callback delay "
        "matters more than requests.",
    )
    backoff_floor: Annotated[float, Field(ge=0)] = Field(
        1.0, description="Seconds: no poll of an export comes sooner than this after its last."
    )
    sweep_interval: PositiveSeconds = Field(
        1.0,
        description="Seconds between beat sweeps. A sweep costs a few Redis calls (it follows "
        "due work, not tracked exports) and is the only way parked polls reach the broker: "
        "every second keeps a backlog bound of twice the threads fed.",
    )
    default_timeout: PositiveSeconds = Field(
        24 * 3600.0,
        description="Seconds an export may run when track_export is given no timeout; then it "
        "ends timed_out.",
    )
    enqueue_horizon: PositiveSeconds = Field(
        10.0,
        description="Polls due within this many seconds go to Celery as countdowns; later ones "
        "stay parked in Redis (a worker holds every countdown task in memory).",
    )
    lease_seconds: PositiveSeconds = Field(
        120.0,
        description="A poll's exclusive lease, in seconds: how long a worker killed mid-poll "
        "can delay an export. Must exceed the HTTP connect + total timeouts.",
    )
    visibility_timeout: PositiveSeconds = Field(
        300.0,
        description="Redis broker: seconds before a message held by a dead worker (a callback, "
        "a track) goes to another. Must exceed POLLER_ENQUEUE_HORIZON + POLLER_LEASE_SECONDS; "
        "lost polls do not wait for it.",
    )
    rescue_grace: PositiveSeconds = Field(
        30.0,
        description="Seconds a handed-off poll or callback may be late before the sweep sends "
        "it again.",
    )
    http_connect_timeout: PositiveSeconds = Field(
        5.0, description="Seconds to connect to a provider."
    )
    http_read_timeout: PositiveSeconds = Field(
        30.0, description="Seconds for each socket read of a provider's answer."
    )
    http_total_timeout: PositiveSeconds | None = Field(
        None,
        description="Wall-clock seconds for a whole request once connected, headers and body, "
        "so a provider trickling its answer (which never trips the per-read timeout) cannot "
        "hold a worker thread. Unset: the read timeout.",
    )
    max_response_bytes: Annotated[int, Field(gt=0)] = Field(
        2 * 1024 * 1024,
        description="Answers larger than this (decoded bytes, so a gzip bomb counts in full) "
        "are refused and retried.",
    )
    record_ttl: PositiveSeconds = Field(
        7 * 24 * 3600.0,
        description="Seconds a finished export's record is kept (for status, refresh and "
        "redeliver).",
    )
    sweep_batch: Annotated[int, Field(gt=0)] = Field(
        1000, description="Most items one sweep step handles."
    )
    confirm_refusals: Annotated[int, Field(ge=1)] = Field(
        3,
        description="Consecutive 404/401/403 answers that end an export as failed (one could "
        "be a provider's hiccup).",
    )
    callback_attempts: Annotated[int, Field(ge=1)] = Field(
        5,
        description="Failed dispatches of one callback before it moves to the dead-letter set "
        "(a broker outage does not count).",
    )
    train_max: Annotated[int, Field(ge=1)] = Field(
        50,
        description="Most exports of one account one poll task takes on (a bulk provider's "
        "request size if larger).",
    )
    train_seconds: PositiveSeconds = Field(
        1.0,
        description="Seconds of requests one poll task plans for; the rest of a train goes on "
        "to another task, so a slow provider still fans out over the fleet.",
    )
    # Requests of one train in flight together (a wave): a train no longer waits on the sum of
    # its latencies, so one message carries ~8x the polls at 100-300 ms answers (a worker's
    # CPU per poll: 1.61 ms at 1, 0.89 ms at 8; bench/latency.py). A wave re-reads the
    # account's hold first, and is one request wide until answers come back calm; against a
    # limit nobody states, the first 429 still finds the rest of its wave already sent.
    train_parallel: Annotated[int, Field(ge=1, le=64)] = Field(
        8,
        description="Requests of one train in flight together (a wave): a worker has at most "
        "--concurrency x this many in flight. 1 asks one request after another (more CPU per "
        "poll); lower it for a provider that serves few requests at once.",
    )
    # Most poll messages ready in the broker (and not yet started) across the fleet: each is
    # about POLLER_TRAIN_SECONDS of one thread's work; the rest of the due work waits in Redis.
    # A new message waits behind the ready ones (a queue is first in, first out), so the bound
    # is a wait: 2 x a worker's 16 threads is about 2 s of their work (bench/overload.py).
    backlog_max: Annotated[int, Field(ge=1)] = Field(
        32,
        description="Most poll messages ready in the broker for the whole fleet (plus one per "
        "account); the rest waits in Redis, shared fairly among accounts. About 2 x the "
        "fleet's worker threads: lower and threads idle, higher and every poll waits longer.",
    )
    breaker_window: PositiveSeconds = Field(
        30.0, description="Seconds over which an account's circuit breaker counts failures."
    )
    breaker_min_calls: Annotated[int, Field(ge=1)] = Field(
        10, description="Requests within the window before the breaker may open."
    )
    breaker_ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5,
        description="Share of failed requests (5xx, timeouts, connection errors) in the window "
        "that opens the breaker.",
    )
    breaker_cooldown: PositiveSeconds = Field(
        10.0, description="Seconds an open breaker holds the account back."
    )
    breaker_max_cooldown: PositiveSeconds = Field(
        300.0,
        description="Seconds: the hold doubles each time the breaker opens again, up to this.",
    )
    heartbeat_interval: PositiveSeconds = Field(
        10.0,
        description="Seconds between a worker's heartbeats: it publishes the accounts it serves "
        "(names and providers, never a secret) to the roster, where track_export looks an "
        "account up. A worker that misses three heartbeats (killed, say) drops out of it.",
    )
    accounts: dict[str, AccountSettings] = Field(
        default_factory=dict,
        description="Every account, one per set of credentials: POLLER_ACCOUNTS__<NAME>__<FIELD> "
        "per field, or all as one JSON object in POLLER_ACCOUNTS. Workers only: a process that "
        "only tracks exports needs none (it asks the roster).",
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """The profile's defaults under what was set (arguments, environment, `.env`)."""
        if not isinstance(data, dict) or not isinstance(data.get("profile"), str):
            return data
        data = {**data, "profile": data["profile"].strip().lower()}
        return {**PROFILES.get(data["profile"], {}), **data}

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
