"""`export-poller accounts`: the accounts the live workers serve, as `track` sees them."""

from __future__ import annotations

from typing import Any

import click

from export_poller.cli import JSON_HELP, emit, main, user_errors


@main.command()
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def accounts(as_json: bool) -> None:
    """List the accounts the live workers serve: provider, workers, last heartbeat.

    This is what `track` checks an account against; this process's own account settings,
    if any, play no part. Exit 1 when no worker is live, so a script can wait for its fleet."""
    from export_poller import clock, roster
    from export_poller.runtime import get_engine

    engine = get_engine()
    workers = engine.roster.workers(fresh=True)
    data: dict[str, Any] = {
        "accounts": roster.table(workers),
        "workers": [
            {"name": w.name, "host": w.host, "pid": w.pid, "last_heartbeat": w.seen_at}
            | {"accounts": dict(w.accounts)}
            for w in sorted(workers, key=lambda w: w.name)
        ],
    }
    emit(data, as_json, lambda: _text(data, engine.roster.where, clock.now()))
    if not workers:
        raise SystemExit(1)


def _text(data: dict[str, Any], where: str, now: float) -> str:
    from export_poller.table import iso

    if not data["workers"]:
        return f"no live worker on {where}"
    rows = [("ACCOUNT", "PROVIDER", "WORKERS", "LAST HEARTBEAT")]
    for r in data["accounts"]:
        ago = max(0.0, now - r["last_heartbeat"])
        seen = f"{iso(r['last_heartbeat'])} ({ago:.0f}s ago)"
        rows.append((r["account"], r["provider"], ", ".join(r["workers"]), seen))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    names = ", ".join(w["name"] for w in data["workers"])
    return "\n".join([*(line.rstrip() for line in lines), f"{len(data['workers'])} live: {names}"])
