"""`export-poller status`, `list` and `watch`: what is tracked, and whether the fleet keeps up."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from export_poller.cli import JSON_HELP, emit, fail, main, resolve, user_errors
from export_poller.providers.errors import ConfigurationError

STATES = ("pending", "running", "completed", "failed", "timed_out", "cancelled")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match:
        fail(f"--older-than {value!r}: use a number with s, m, h, d or w (90s, 15m, 2h, 3d)")
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def _provider(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A provider filter with the registry's did-you-mean, instead of an empty list."""
    if value is None:
        return None
    from export_poller.providers.registry import get_provider_class

    try:
        return get_provider_class(value).name
    except ConfigurationError as exc:
        fail(str(exc))
        return None


@main.command()
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def status(tracking_id: str, as_json: bool) -> None:
    """Show one tracked export (an id or a unique prefix of one)."""
    from export_poller.api import get_export
    from export_poller.table import describe

    found = get_export(resolve(tracking_id))
    if found is None:
        raise ConfigurationError(f"unknown tracking id {tracking_id!r}")
    record = found
    if "account_lag" in record:  # active: is the fleet keeping up?
        from export_poller.runtime import get_engine

        record = {**record, "fleet_backlog": get_engine().backlog_view()}
    emit(record, as_json, lambda: describe(record))


def _records(state: str | None, provider: str | None, account: str | None) -> list[dict[str, Any]]:
    from export_poller.runtime import get_engine

    engine = get_engine()
    found = (engine.get(tid) for tid in engine.store.iter_ids())
    return sorted(
        (
            r
            for r in found
            if r
            and (state is None or r["state"] == state)
            and (provider is None or r["provider"] == provider)
            and (account is None or r["account"] == account)
        ),
        key=lambda r: r["created_at"] or 0,
    )


@main.command(name="list")
@click.option("--state", type=click.Choice(STATES))
@click.option("--provider", callback=_provider)
@click.option("--account")
@click.option(
    "--older-than", callback=_duration, help="Only exports tracked longer ago (90s, 15m, 2h, 3d)."
)
@click.option("--stuck", is_flag=True, help="Only active exports that look stuck, with why.")
@click.option(
    "--periods",
    type=click.FloatRange(min=1),
    default=3.0,
    show_default=True,
    help="--stuck: silent for this many of the longest backoff wait.",
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def list_(
    state: str | None,
    provider: str | None,
    account: str | None,
    older_than: float | None,
    stuck: bool,
    periods: float,
    as_json: bool,
) -> None:
    """List tracked exports (finished ones are kept for POLLER_RECORD_TTL).

    --stuck shows active exports with no answer for --periods of their longest wait, a poll
    overdue past the sweep's rescue, or an account that is missing, held back (rate limit,
    open breaker) or whose credentials were refused; each with its reasons."""
    from export_poller.table import render

    records = _records(state, provider, account)
    now = time.time()
    if older_than is not None:
        records = [r for r in records if (r.get("created_at") or now) <= now - older_than]
    if stuck:
        records = _stuck(records, now, periods)
    emit(records, as_json, lambda: _render_list(records, stuck, render) + _backlog_line())


def _backlog_line() -> str:
    """Under the table: the fleet's backlog and each account's lag, to see overload coming."""
    from export_poller.runtime import get_engine

    view = get_engine().backlog_view()
    lags = ", ".join(f"{a} {v:.1f}s" for a, v in sorted(view["lag"].items())) or "-"
    return (
        f"\nbacklog: {view['ready']} poll messages ready in the broker (bound {view['bound']}), "
        f"{view['in_broker']} in it with countdowns; {view['due_in_redis']} due polls waiting "
        f"in Redis; lag: {lags}"
    )


def _stuck(records: list[dict[str, Any]], now: float, periods: float) -> list[dict[str, Any]]:
    from export_poller.api import stuck_reasons

    out = []
    for record in records:
        reasons = stuck_reasons(record, now, periods)
        if reasons:
            out.append({**record, "stuck": reasons})
    return out


def _render_list(
    records: list[dict[str, Any]], stuck: bool, render: Callable[[list[dict[str, Any]]], str]
) -> str:
    table = render(records)
    if not stuck:
        return table
    why = [f"{r['tracking_id'][:12]}  {'; '.join(r['stuck'])}" for r in records]
    return "\n".join([table, "", *why]) if why else table


@main.command()
@click.option("--state", type=click.Choice(STATES))
@click.option("--provider", callback=_provider)
@click.option("--account")
@click.option("--interval", type=float, default=1.0, show_default=True)
@click.option("--once", is_flag=True, help="Print the table once and exit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of records per line.")
@user_errors
def watch(
    state: str | None,
    provider: str | None,
    account: str | None,
    interval: float,
    once: bool,
    as_json: bool,
) -> None:
    """A live table of tracked exports, with progress bars where providers report progress."""
    from export_poller.table import render

    while True:
        records = _records(state, provider, account)
        if as_json:
            click.echo(json.dumps(records, sort_keys=True))
        else:
            click.echo(("\x1b[2J\x1b[H" if sys.stdout.isatty() else "") + render(records))
        if once:
            return
        time.sleep(interval)
