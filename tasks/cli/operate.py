"""`export-poller cancel`, `redeliver` and `refresh`: acting on one tracked export."""

from __future__ import annotations

from typing import Any

import click

from export_poller.cli import JSON_HELP, emit, main, resolve, user_errors
from export_poller.cli.track import queue_warnings


@main.command()
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def cancel(tracking_id: str, as_json: bool) -> None:
    """Stop tracking an export; no callback fires."""
    from export_poller.api import cancel_export, get_export

    tid = resolve(tracking_id)
    cancelled = cancel_export(tid)
    record = get_export(tid) or {}
    result = {"tracking_id": tid, "cancelled": cancelled, "state": record.get("state")}
    emit(result, as_json, lambda: "cancelled" if cancelled else "already finished")


@main.command()
@click.argument("tracking_id")
@click.option(
    "--queue",
    help="Send it to this queue instead (your workers'), whatever its own routing said.",
)
@click.option(
    "--no-queue-check",
    is_flag=True,
    help="Skip asking the workers (1 s) whether one consumes --queue.",
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def redeliver(tracking_id: str, queue: str | None, no_queue_check: bool, as_json: bool) -> None:
    """Send a finished export's callback again, on purpose (counted in the record as
    `redeliveries`; the record sent carries the count). A callback that went to a queue
    where nothing runs it is re-routed with --queue."""
    from export_poller.api import redeliver_callback

    record = redeliver_callback(resolve(tracking_id), queue=queue)
    warnings = list(record.get("warnings") or [])
    if queue is not None and not no_queue_check:
        warnings += queue_warnings([queue])
    for warning in [] if as_json else warnings:
        click.echo(f"warning: {warning}", err=True)
    emit(record | {"warnings": warnings}, as_json, lambda: _sent(record))


@main.command()
@click.argument("tracking_id")
@click.option("--callback", is_flag=True, help="Also send the callback again, with the answer.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def refresh(tracking_id: str, callback: bool, as_json: bool) -> None:
    """Ask the provider about a finished export once more (e.g. a fresh Cometly download URL);
    the answer is kept in the record's status. No callback fires unless --callback."""
    from export_poller.api import refresh_export
    from export_poller.table import describe

    record = refresh_export(resolve(tracking_id), callback=callback)
    emit(record, as_json, lambda: describe(record) + ("\n" + _sent(record) if callback else ""))


def _sent(record: dict[str, Any]) -> str:
    to = f" to queue {record['redelivered_to']!r}" if record.get("redelivered_to") else ""
    return (
        f"callback sent again{to} for {record['tracking_id']} (state {record['state']}, "
        f"redelivery {record.get('redeliveries')})"
    )
