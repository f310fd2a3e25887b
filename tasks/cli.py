"""`export-poller`: track, inspect and cancel exports; run the simulator or the demo.

A user mistake (unknown provider, unknown tracking id, Redis unreachable, a bad setting) is one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import redis

from export_poller.config.settings import InvalidSettings
from export_poller.providers.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])
STATES = ("pending", "running", "completed", "failed", "timed_out", "cancelled")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


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

    return wrapper  # type: ignore[return-value]


def _emit(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text())


@click.group()
@click.version_option(package_name="export-poller")
def main() -> None:
    """Track long-running exports at third-party providers until they finish."""


@main.command()
@click.argument("provider")
@click.argument("export_id")
@click.option("--account", help="Account name (defaults to the provider's name).")
@click.option("--on-complete", help="Task name called with the final record on completion.")
@click.option("--on-failure", help="Task name called with the final record on failure/timeout.")
@click.option("--metadata", help="JSON object kept with the export and passed to callbacks.")
@click.option("--timeout", type=float, help="Seconds before the export times out.")
@user_errors
def track(
    provider: str,
    export_id: str,
    account: str | None,
    on_complete: str | None,
    on_failure: str | None,
    metadata: str | None,
    timeout: float | None,
) -> None:
    """Start tracking PROVIDER's export EXPORT_ID; prints the tracking id."""
    from celery import signature

    from export_poller.api import track_export

    try:
        meta = json.loads(metadata) if metadata else None
    except ValueError as exc:
        raise ConfigurationError(f"--metadata is not JSON: {exc}") from exc
    tid = track_export(
        provider,
        export_id,
        account=account,
        metadata=meta,
        timeout=timeout,
        on_complete=signature(on_complete) if on_complete else None,
        on_failure=signature(on_failure) if on_failure else None,
    )
    click.echo(tid)


@main.command()
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def status(tracking_id: str, as_json: bool) -> None:
    """Show one tracked export."""
    from export_poller.api import get_export

    record = get_export(tracking_id)
    if record is None:
        raise ConfigurationError(f"unknown tracking id {tracking_id!r}")
    _emit(record, as_json, lambda: "\n".join(f"{k}: {v}" for k, v in record.items()))


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
@click.option("--provider")
@click.option("--account")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def list_(state: str | None, provider: str | None, account: str | None, as_json: bool) -> None:
    """List tracked exports (finished ones are kept for POLLER_RECORD_TTL)."""
    from export_poller.table import render

    records = _records(state, provider, account)
    _emit(records, as_json, lambda: render(records))


@main.command()
@click.argument("tracking_id")
@user_errors
def cancel(tracking_id: str) -> None:
    """Stop tracking an export; no callback fires."""
    from export_poller.api import cancel_export, get_export

    if get_export(tracking_id) is None:
        raise ConfigurationError(f"unknown tracking id {tracking_id!r}")
    click.echo("cancelled" if cancel_export(tracking_id) else "already finished")


@main.command()
@click.option("--state", type=click.Choice(STATES))
@click.option("--provider")
@click.option("--account")
@click.option("--interval", type=float, default=1.0, show_default=True)
@click.option("--once", is_flag=True, help="Print the table once and exit.")
@user_errors
def watch(
    state: str | None, provider: str | None, account: str | None, interval: float, once: bool
) -> None:
    """A live table of tracked exports, with progress bars where providers report progress."""
    from export_poller.table import render

    while True:
        table = render(_records(state, provider, account))
        click.echo(("\x1b[2J\x1b[H" if sys.stdout.isatty() else "") + table)
        if once:
            return
        time.sleep(interval)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def simulate(ctx: click.Context) -> None:
    """Run the provider simulator (see `export-poller simulate --help-sim`)."""
    from export_poller.providers.simulator.server import main as simulator_main

    sys.exit(simulator_main(list(ctx.args)))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9808, show_default=True)
@user_errors
def metrics(host: str, port: int) -> None:
    """Serve Prometheus metrics (tracked exports, polls, callback lag, waits, breakers)."""
    from export_poller.metrics import serve
    from export_poller.runtime import get_engine

    engine = get_engine()
    engine.store.counts()  # fail now, in one line, if Redis is unreachable
    click.echo(f"serving metrics on http://{host}:{port}/metrics")
    serve(engine, host, port)


@main.command()
@click.option("--exports", type=int, default=25, show_default=True, help="How many to track.")
def demo(exports: int) -> None:
    """Simulator + Redis + worker + beat; track exports at all five providers to the end."""
    from export_poller.demo import run_demo

    sys.exit(run_demo(exports))


# `export-poller health` (probes, supervisors) lives in its own module.
from export_poller.health import health  # noqa: E402

main.add_command(health)

if __name__ == "__main__":
    main()
