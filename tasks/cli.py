"""`export-poller`: track, inspect and cancel exports; run the simulator or the demo.

A user mistake (unknown provider, unknown tracking id, Redis unreachable, a bad setting) is one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import kombu.exceptions
import redis

from export_poller.config.brokers import redact_text
from export_poller.config.settings import InvalidSettings
from export_poller.providers.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])
STATES = ("pending", "running", "completed", "failed", "timed_out", "cancelled")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_QUEUE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
JSON_HELP = "Machine-readable output (JSON)."


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def user_errors(func: F) -> F:
    """Turn the errors a user can cause into one clear line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigurationError as exc:
            _fail(str(exc))
        except InvalidSettings as exc:
            _fail(str(exc))
        except redis.AuthenticationError:
            _fail("Redis refused the password in POLLER_REDIS_URL")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            _fail(f"Redis is unreachable ({type(exc).__name__}); check POLLER_REDIS_URL")
        except kombu.exceptions.OperationalError as exc:
            _fail(f"the broker is unreachable: {redact_text(str(exc))}")
        except RuntimeError as exc:  # api.OperationFailed: right input, not possible now
            _fail(str(exc), code=1)

    return wrapper  # type: ignore[return-value]


def _emit(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text())


def _resolve(tracking_id: str) -> str:
    from export_poller.api import resolve_id

    return resolve_id(tracking_id)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match:
        _fail(f"--older-than {value!r}: use a number with s, m, h, d or w (90s, 15m, 2h, 3d)")
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
        _fail(str(exc))
        return None


@click.group()
@click.version_option(package_name="export-poller")
def main() -> None:
    """Track long-running exports at third-party providers until they finish."""
    # Warnings meant for the user are printed by the commands; keep Python's last-resort
    # handler from printing the library's log lines a second time.
    logging.getLogger("export_poller").addHandler(logging.NullHandler())


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
    from export_poller.api import callback_signature, callback_warnings, track_export

    try:
        meta = json.loads(metadata) if metadata else None
    except ValueError as exc:
        raise ConfigurationError(f"--metadata is not JSON: {exc}") from exc
    sigs = {
        name: _cli_signature(task, callback_queue)
        for name, task in (("on_complete", on_complete), ("on_failure", on_failure))
    }
    tid = track_export(
        provider,
        export_id,
        account=account,
        metadata=meta,
        timeout=timeout,
        tracking_id=tracking_id,
        **sigs,
    )
    routed = [callback_signature(sig, name) for name, sig in sigs.items() if sig]
    warnings = callback_warnings(*routed)
    if not no_queue_check:
        warnings += _consumer_warnings(routed)
    if as_json:
        click.echo(json.dumps({"tracking_id": tid, "warnings": warnings}, indent=2))
        return
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(tid)


def _consumer_warnings(signatures: list[Any]) -> list[str]:
    """Ask the workers once whether one consumes each callback queue other than ours."""
    from export_poller.api import queue_has_consumer
    from export_poller.config.settings import get_settings

    queues = {(s.get("options") or {}).get("queue") for s in signatures if isinstance(s, dict)}
    out = []
    for queue in sorted(q for q in queues if isinstance(q, str) and q != get_settings().queue):
        try:
            found = queue_has_consumer(queue)
        except Exception as exc:  # a check, not the command: the export is tracked
            out.append(f"could not ask the workers about queue {queue!r}: {type(exc).__name__}")
            continue
        if found is None:
            out.append(f"no worker answered on this broker: is one consuming queue {queue!r}?")
        elif not found:
            out.append(f"no worker on this broker consumes queue {queue!r} yet: callbacks wait")
    return out


def _cli_signature(task: str | None, queue: str | None) -> Any:
    from celery import signature

    if queue is not None and not _QUEUE.match(queue):
        raise ConfigurationError(f"--callback-queue {queue!r} is not a queue name")
    if not task:
        return None
    return signature(task, queue=queue) if queue else signature(task)


@main.command()
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def status(tracking_id: str, as_json: bool) -> None:
    """Show one tracked export (an id or a unique prefix of one)."""
    from export_poller.api import get_export
    from export_poller.table import describe

    found = get_export(_resolve(tracking_id))
    if found is None:
        raise ConfigurationError(f"unknown tracking id {tracking_id!r}")
    record = found
    if "account_lag" in record:  # active: is the fleet keeping up?
        from export_poller.runtime import get_engine

        record = {**record, "fleet_backlog": get_engine().backlog_view()}
    _emit(record, as_json, lambda: describe(record))


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
    _emit(records, as_json, lambda: _render_list(records, stuck, render) + _backlog_line())


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
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def cancel(tracking_id: str, as_json: bool) -> None:
    """Stop tracking an export; no callback fires."""
    from export_poller.api import cancel_export, get_export

    tid = _resolve(tracking_id)
    cancelled = cancel_export(tid)
    record = get_export(tid) or {}
    result = {"tracking_id": tid, "cancelled": cancelled, "state": record.get("state")}
    _emit(result, as_json, lambda: "cancelled" if cancelled else "already finished")


@main.command()
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def redeliver(tracking_id: str, as_json: bool) -> None:
    """Send a finished export's callback again, on purpose (counted in the record as
    `redeliveries`; the record sent carries the count)."""
    from export_poller.api import redeliver_callback

    record = redeliver_callback(_resolve(tracking_id))
    _emit(record, as_json, lambda: _sent(record))


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

    record = refresh_export(_resolve(tracking_id), callback=callback)
    _emit(record, as_json, lambda: describe(record) + ("\n" + _sent(record) if callback else ""))


def _sent(record: dict[str, Any]) -> str:
    return (
        f"callback sent again for {record['tracking_id']} (state {record['state']}, "
        f"redelivery {record.get('redeliveries')})"
    )


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


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def simulate(ctx: click.Context) -> None:
    """Run the provider simulator (`export-poller simulate --help` for its options)."""
    from export_poller.providers.simulator.server import main as simulator_main

    sys.exit(simulator_main(list(ctx.args), prog="export-poller simulate"))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9808, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the counters once, as JSON, and exit.")
@user_errors
def metrics(host: str, port: int, as_json: bool) -> None:
    """Serve Prometheus metrics (tracked exports, polls, callback lag, waits, breakers)."""
    from export_poller.metrics import serve
    from export_poller.runtime import get_engine

    engine = get_engine()
    counts = engine.store.counts()  # fail now, in one line, if Redis is unreachable
    if as_json:
        data = {"counters": engine.store.metric_fields(), **counts}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"serving metrics on http://{host}:{port}/metrics")
    serve(engine, host, port)


@main.command()
@click.option("--exports", type=int, default=25, show_default=True, help="How many to track.")
@click.option(
    "--redis-url",
    help="Use this Redis instead of a private one (the demo still uses its own queue and key "
    "prefix there, and deletes what it wrote).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the outcome, as JSON.")
def demo(exports: int, redis_url: str | None, as_json: bool) -> None:
    """Simulator + Redis + worker + beat; track exports at all five providers to the end.

    Everything is private unless told otherwise: its own redis-server, queue and key prefix,
    whatever POLLER_* variables are set; nothing is left behind."""
    from export_poller.demo import run_demo

    sys.exit(run_demo(exports, redis_url=redis_url, as_json=as_json))


# `export-poller health` (probes, supervisors) lives in its own module.
from export_poller.health import health  # noqa: E402

main.add_command(health)

if __name__ == "__main__":
    main()
