"""`export-poller health`: what a liveness probe or a supervisor asks before trusting a process.

Checks the settings load, the Redis store answers, the broker accepts a connection, and every
account's settings build an adapter (known provider, required fields). No provider is called:
a probe must not spend an account's rate limit or fail because a third party is down.
Exit 0 when all pass; otherwise 1 and one line naming the first failure. No secret is printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import click

from export_poller.config.brokers import redact_text, redact_url

TIMEOUT = 3.0  # seconds per connection attempt: a probe answers quickly or fails


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _settings() -> str:
    from export_poller.config.settings import get_settings

    s = get_settings()
    return f"{len(s.accounts)} accounts, broker {s.broker_kind}"


def _redis() -> str:
    from export_poller.config.settings import get_settings
    from export_poller.connect import redis_client

    s = get_settings()
    client = redis_client(s, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()
    return redact_url(s.redis_url)


def _broker() -> str:
    from export_poller.celery import app, settings

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=int(TIMEOUT))
        conn.default_channel  # noqa: B018 - opening a channel proves the login and the vhost
    return redact_url(settings.broker)


def _accounts() -> str:
    from export_poller.account.request import ProviderPool
    from export_poller.config.settings import get_settings

    s = get_settings()
    pool = ProviderPool(s)
    for name in sorted(s.accounts):
        pool.get(name)
    return ", ".join(sorted(s.accounts)) or "none configured"


CHECKS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("settings", _settings),
    ("redis", _redis),
    ("broker", _broker),
    ("accounts", _accounts),
)


def run_checks() -> list[Check]:
    """Every check in order; after a failed settings check the others cannot run."""
    results: list[Check] = []
    for name, check in CHECKS:
        try:
            results.append(Check(name, True, check()))
        except Exception as exc:  # a probe reports; it never raises
            results.append(Check(name, False, _describe(exc)))
            if name == "settings":
                break
    return results


def _describe(exc: Exception) -> str:
    """The error's type and message, with any URL's password hidden."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {redact_text(text)}"[:300]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Every check as a JSON object.")
def health(as_json: bool) -> None:
    """Exit 0 when Redis, the broker and the account settings are reachable and valid."""
    results = run_checks()
    ok = len(results) == len(CHECKS) and all(r.ok for r in results)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [asdict(r) for r in results]}, indent=2))
    elif ok:
        click.echo("ok: " + "; ".join(f"{r.name} {r.detail}" for r in results))
    else:
        bad = next(r for r in results if not r.ok)
        click.echo(f"unhealthy: {bad.name}: {bad.detail}", err=True)
    sys.exit(0 if ok else 1)
