"""`export-poller track`: start tracking an export, and say what can be told about its callbacks."""

from __future__ import annotations

import difflib
import json
from typing import Any

import click

from export_poller.cli import JSON_HELP, main, user_errors
from export_poller.providers.errors import ConfigurationError


@main.command()
@click.argument("provider")
@click.argument("export_id")
@click.option("--account", help="Account name (defaults to the provider's name).")
@click.option("--on-complete", help="Task name called with the final record on completion.")
@click.option("--on-failure", help="Task name called with the final record on failure/timeout.")
@click.option(
    "--callback-queue",
    help="Queue the callbacks go to (your workers'); default POLLER_CALLBACK_QUEUE, else ours.",
)
@click.option("--tracking-id", help="Your own tracking id (8-64 of A-Z a-z 0-9 - _).")
@click.option("--metadata", help="JSON object kept with the export and passed to callbacks.")
@click.option("--timeout", type=float, help="Seconds before the export times out.")
@click.option(
    "--no-queue-check",
    is_flag=True,
    help="Skip asking the workers (1 s) whether one consumes --callback-queue.",
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def track(
    provider: str,
    export_id: str,
    account: str | None,
    on_complete: str | None,
    on_failure: str | None,
    callback_queue: str | None,
    tracking_id: str | None,
    metadata: str | None,
    timeout: float | None,
    no_queue_check: bool,
    as_json: bool,
) -> None:
    """Start tracking PROVIDER's export EXPORT_ID; prints the tracking id.

    A callback's task must be one your own workers run: name their queue with
    --callback-queue (or POLLER_CALLBACK_QUEUE), or the callback goes to this service's
    queue, whose workers discard a task they do not know (a warning says so)."""
    from export_poller.api import track_export

    sigs = {
        name: _cli_signature(task, callback_queue)
        for name, task in (("on_complete", on_complete), ("on_failure", on_failure))
    }
    tid = track_export(
        provider,
        export_id,
        account=account,
        metadata=_json_metadata(metadata),
        timeout=timeout,
        tracking_id=tracking_id,
        **sigs,
    )
    warnings = _warnings(sigs, ask_workers=not no_queue_check)
    if as_json:
        click.echo(json.dumps({"tracking_id": tid, "warnings": warnings}, indent=2))
        return
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(tid)


def _json_metadata(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError as exc:
        raise ConfigurationError(f"--metadata is not JSON: {exc}") from exc


def _warnings(sigs: dict[str, Any], *, ask_workers: bool) -> list[str]:
    """What can be told about the callbacks as they will be sent; asking the workers whether
    one consumes each callback queue costs a second."""
    from export_poller.api import callback_signature, callback_warnings

    routed = [callback_signature(sig, name) for name, sig in sigs.items() if sig]
    warnings = callback_warnings(*routed)
    queues = {(s.get("options") or {}).get("queue") for s in routed if isinstance(s, dict)}
    named = [q for q in queues if isinstance(q, str)]
    return warnings + queue_warnings(named) if ask_workers else warnings


def queue_warnings(queues: list[str]) -> list[str]:
    """Ask the workers once whether one consumes each queue other than ours; for one that none
    does, the closest queue they do consume (a typo sends callbacks where nothing runs them)."""
    from export_poller.api import consumed_queues
    from export_poller.config.settings import get_settings

    asked = sorted(set(queues) - {get_settings().queue})
    if not asked:
        return []
    try:
        consumed = consumed_queues()
    except Exception as exc:  # a check, not the command, which is done by now
        return [f"could not ask the workers about queue {q!r}: {type(exc).__name__}" for q in asked]
    if consumed is None:
        return [f"no worker answered on this broker: is one consuming queue {q!r}?" for q in asked]
    return [_no_consumer(q, consumed) for q in asked if q not in consumed]


def _no_consumer(queue: str, consumed: set[str]) -> str:
    close = difflib.get_close_matches(queue, sorted(consumed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no worker on this broker consumes queue {queue!r} yet: callbacks wait{hint}"


def _cli_signature(task: str | None, queue: str | None) -> Any:
    from celery import signature

    from export_poller.operations import queue_name

    if queue is not None:
        queue_name(queue, "--callback-queue")
    if not task:
        return None
    return signature(task, queue=queue) if queue else signature(task)
