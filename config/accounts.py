"""One account's settings: its provider and credentials, nested in the settings object
(`POLLER_ACCOUNTS__ACME__PROVIDER=cometly` defines the account `acme`). Only workers hold
them; credentials are `SecretStr`, read with `.get_secret_value()` only where a request is
signed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from export_poller.config import brokers

_RATE = re.compile(r"^\s*\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)


class AccountSettings(BaseModel):
    """One set of credentials at one provider; exports are always polled with their own account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(
        description="The account's provider: chaossearch, saymon, biodatacatalyst, cometly or "
        "cgc (case-insensitive)."
    )
    base_url: str | None = Field(
        None,
        description="The provider API's base URL (http or https). Cometly and the Seven Bridges "
        "platforms have a default; ChaosSearch and SAYMON need one. Point it at the simulator "
        "to try things out.",
    )
    token: SecretStr | None = Field(
        None, description="Seven Bridges (CGC, BioData Catalyst) or Cometly API token. Secret."
    )
    username: str | None = Field(None, description="SAYMON basic-auth user.")
    password: SecretStr | None = Field(None, description="SAYMON basic-auth password. Secret.")
    access_key: SecretStr | None = Field(
        None, description="ChaosSearch AWS access key id (SigV4). Secret."
    )
    secret_key: SecretStr | None = Field(
        None, description="ChaosSearch AWS secret access key (SigV4). Secret."
    )
    region: str | None = Field(None, description="ChaosSearch SigV4 region, e.g. us-east-1.")
    rate_limit: str | None = Field(
        None,
        description="An upper bound the whole fleet never exceeds for this account, e.g. "
        "30/minute or '1000 per 5 minutes'. Not needed to stay inside a provider's limit: a "
        "stated budget and 429s are followed on their own; set it to keep below a share you "
        "agreed on.",
    )

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
        return redacted_args(super().__repr_args__(), ("base_url",))

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and not _RATE.match(value):
            raise ValueError(f"must look like '30/minute' or '1000 per 5 minutes', got {value!r}")
        return value


def redacted_args(
    args: Iterable[tuple[str | None, Any]], urls: tuple[str, ...]
) -> Iterator[tuple[str | None, Any]]:
    """A repr's fields with the passwords of URL fields masked (SecretStr masks the rest)."""
    for name, value in args:
        yield name, brokers.redact_url(value) if name in urls and isinstance(value, str) else value
