"""The knobs of one simulator instance, with defaults that match the project's demo settings.

Credentials are plain strings on purpose: the simulator is a local test double, and tests need to
build both valid and invalid requests from the same values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

PROVIDERS: tuple[str, ...] = ("chaossearch", "saymon", "biodatacatalyst", "cgc", "cometly")

# Fake credentials of a local test double, documented for the demo; nothing real uses them.
DEFAULT_TOKEN = "sim-token"  # noqa: S105
DEFAULT_USER = "sim"
DEFAULT_PASSWORD = "sim-password"  # noqa: S105
DEFAULT_ACCESS_KEY = "SIMACCESSKEY"
DEFAULT_SECRET_KEY = "sim-secret-key"  # noqa: S105
DEFAULT_REGION = "us-east-1"

Clock = Callable[[], float]
"""Epoch seconds; injectable so tests can move job lifecycles and rate windows without sleeping."""


@dataclass(frozen=True)
class RateLimit:
    """`limit` requests per `window_s` seconds for one credential, counted in fixed windows."""

    limit: int
    window_s: float

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window_s <= 0:
            raise ValueError(f"a rate limit needs limit >= 1 and window > 0, got {self}")

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        """Read the CLI form `LIMIT/SECONDS`; `0` (or `off`) disables the limit."""
        value = text.strip().lower()
        if value in ("0", "off", "none"):
            return None
        limit, sep, window = value.partition("/")
        if not sep:
            raise ValueError(f"rate limit must look like 30/60 (requests/seconds), got {text!r}")
        try:
            return cls(int(limit), float(window))
        except ValueError as exc:
            raise ValueError(f"rate limit must look like 30/60, got {text!r}: {exc}") from exc

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_s:g}"


def _default_users() -> dict[str, str]:
    return {DEFAULT_USER: DEFAULT_PASSWORD}


def _default_aws_keys() -> dict[str, str]:
    return {DEFAULT_ACCESS_KEY: DEFAULT_SECRET_KEY}


@dataclass(frozen=True)
class SimulatorOptions:
    """Everything that shapes a simulator; `jobs` and `faults` are what a `--script` file holds."""

    tokens: tuple[str, ...] = (DEFAULT_TOKEN,)
    users: Mapping[str, str] = field(default_factory=_default_users)
    aws_keys: Mapping[str, str] = field(default_factory=_default_aws_keys)
    region: str = DEFAULT_REGION
    cometly_limit: RateLimit | None = RateLimit(30, 60.0)
    sbg_limit: RateLimit | None = RateLimit(1000, 300.0)
    seed: int = 0
    jobs: tuple[Mapping[str, Any], ...] = ()
    faults: Mapping[str, Any] | None = None
    clock: Clock = time.time

    def credentials_for(self, provider: str) -> frozenset[str]:
        """The credential strings a job `owner` may name at this provider."""
        if provider == "chaossearch":
            return frozenset(self.aws_keys)
        if provider == "saymon":
            return frozenset(self.users)
        return frozenset(self.tokens)


class OptionFields(TypedDict, total=False):
    """Keyword form of `SimulatorOptions` for `start_in_thread`/`serve`; limits may be strings."""

    tokens: Sequence[str]
    users: Mapping[str, str]
    aws_keys: Mapping[str, str]
    region: str
    cometly_limit: RateLimit | str | None
    sbg_limit: RateLimit | str | None
    seed: int
    jobs: Sequence[Mapping[str, Any]]
    faults: Mapping[str, Any] | None
    clock: Clock


def make_options(**fields: Unpack[OptionFields]) -> SimulatorOptions:
    """Normalize the keyword form (lists to tuples, `"30/60"` to `RateLimit`) into options."""
    values: dict[str, Any] = dict(fields)
    for name in ("cometly_limit", "sbg_limit"):
        if isinstance(values.get(name), str):
            values[name] = RateLimit.parse(values[name])
    for name in ("tokens", "jobs"):
        if isinstance(values.get(name), str | bytes):
            raise TypeError(f"{name} must be a sequence, not a single string")
        if name in values:
            values[name] = tuple(values[name])
    return SimulatorOptions(**values)
