"""`export-poller simulate`, `metrics` and `demo`: the processes the CLI runs."""

from __future__ import annotations

import json
import sys

import click

from export_poller.cli import main, user_errors


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
