"""Shared helpers for the adapter tests: accounts with known secrets and recorded answers.

`tests/fixtures/<provider>/seed_*.json` are the documentation's examples verbatim (ChaosSearch's
rebuilt with its braces); the other files there are recorded-style answers made to the documented
shapes, one per state and error body.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export_poller.config.settings import AccountSettings, Settings
from export_poller.providers.base import Provider, path_segment
from export_poller.providers.registry import get_provider_class

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ACCOUNT = "acme"
USERNAME = "poller-bot"
SECRETS = {
    "token": "tok-SECRET-5f1e2d3c4b5a",
    "password": "pw-SECRET-8c7b6a5948",
    "access_key": "AKIASECRETACCESS0001",
    "secret_key": "sk-SECRET-0a9b8c7d6e5f4a3b",
}
REGION = "eu-west-1"
BASE_URLS = {
    "chaossearch": "https://acme.chaossearch.example",
    "saymon": "https://saymon.acme.example",
    "biodatacatalyst": "https://api.sb.biodatacatalyst.nhlbi.nih.gov",
    "cgc": "https://cgc-api.sbgenomics.com",
    "cometly": "https://app.cometly.com",
}
SAMPLE_IDS = {
    "chaossearch": "5b00d97d-133d-48e7-9e61-a8a98e4d0a38",
    "saymon": "64f0c2e5a1b2c3d4e5f60718",
    "biodatacatalyst": "crand0mKvetGpxIjo088DnMXEg0t6srX",
    "cgc": "gET2tre6CG411ac0SbNkaVA0SNRK4H9W",
    "cometly": "123",
}
AUTH_HEADERS = {
    "chaossearch": "Authorization",
    "saymon": "Authorization",
    "biodatacatalyst": "X-SBG-Auth-Token",
    "cgc": "X-SBG-Auth-Token",
    "cometly": "Authorization",
}
PROVIDERS = sorted(BASE_URLS)


def load(provider: str, name: str) -> Any:
    return json.loads((FIXTURES / provider / f"{name}.json").read_text())


def raw_text(provider: str, name: str) -> str:
    return (FIXTURES / provider / f"{name}.json").read_text()


def account(provider: str, **overrides: Any) -> AccountSettings:
    fields: dict[str, Any] = {
        "provider": provider,
        "base_url": BASE_URLS[provider] if provider in ("chaossearch", "saymon") else None,
        "username": USERNAME,
        "region": REGION,
        **SECRETS,
    }
    fields.update(overrides)
    return AccountSettings(**fields)


def make(
    provider: str, *, name: str = ACCOUNT, base_url: str | None = None, **settings: Any
) -> Provider:
    """An adapter for `provider` on an account holding every kind of credential."""
    acct = account(provider, **({"base_url": base_url} if base_url else {}))
    full = Settings(_env_file=None, accounts={name: acct}, **settings)  # type: ignore[call-arg]
    return get_provider_class(provider)(name, acct, full)


def status_url(provider: str, export_id: str) -> str:
    base = BASE_URLS[provider]
    paths = {
        "chaossearch": "/bulkexport/status",
        "saymon": f"/node/api/bulk/{path_segment(export_id)}/status",
        "biodatacatalyst": f"/v2/storage/exports/{path_segment(export_id)}",
        "cgc": "/v2/bulk/storage/exports/get",
        "cometly": f"/public-api/v1/events/exports/{path_segment(export_id)}",
    }
    return base + paths[provider]


def method(provider: str) -> str:
    return "POST" if provider in ("chaossearch", "cgc") else "GET"


def ok_body(provider: str) -> Any:
    """A documented answer about `SAMPLE_IDS[provider]`."""
    if provider == "cgc":
        return {"items": load("cgc", "seed_bulk_completed")["items"][:1]}
    seeds = {
        "chaossearch": "seed_running",
        "saymon": "seed_finished",
        "biodatacatalyst": "seed_completed",
        "cometly": "seed_completed",
    }
    return load(provider, seeds[provider])


def assert_no_secret(said: str) -> None:
    for secret in SECRETS.values():
        assert secret not in said
