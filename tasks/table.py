"""The live table shown by `watch` and `demo`: one row per export, a bar where progress is known."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from export_poller.policy import ACTIVE_STATES

COLUMNS = (
    "tracking id",
    "provider",
    "account",
    "export id",
    "state",
    "tries",
    "progress",
    "next",
    "updated",
)
_BAR = 10


def progress_bar(record: dict[str, Any]) -> str:
    progress = (record.get("status") or {}).get("progress")
    if not progress or not progress.get("total"):
        return "-"
    fraction = min(1.0, float(progress["completed"]) / float(progress["total"]))
    filled = round(fraction * _BAR)
    return "[" + "#" * filled + "." * (_BAR - filled) + f"] {fraction:4.0%}"


def next_poll(record: dict[str, Any], now: float | None = None) -> str:
    """Seconds to the next poll; "held" while the account waits out a provider's 429."""
    when = record.get("next_poll_at")
    if record.get("state") not in ACTIVE_STATES or when is None:
        return "-"
    now = now or time.time()
    held = record.get("account_held_until")
    if held is not None and held > now:
        return f"held {held - now:.1f}s"
    return f"{max(0.0, when - now):.1f}s"


def row(record: dict[str, Any], now: float | None = None) -> tuple[str, ...]:
    export_id = str(record.get("export_id"))
    return (
        str(record["tracking_id"])[:12],
        str(record.get("provider")),
        str(record.get("account")),
        export_id if len(export_id) <= 20 else export_id[:19] + "…",
        str(record.get("state")),
        str(record.get("attempts")),
        progress_bar(record),
        next_poll(record, now),
        iso(record.get("updated_at")),
    )


def render(records: Iterable[dict[str, Any]], now: float | None = None) -> str:
    rows = [COLUMNS, *(row(r, now) for r in records)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def iso(when: object) -> str:
    """A Unix time as ISO-8601 UTC to the second (`2026-11-25T17:02:16Z`); '-' when unset."""
    if not isinstance(when, int | float) or isinstance(when, bool):
        return "-"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(record: dict[str, Any]) -> str:
    """One record for people: `key: value` lines, times in ISO-8601 UTC, nested values as JSON."""
    lines = []
    for key, value in record.items():
        if key.endswith("_at") or key == "deadline":
            text = iso(value)
        elif isinstance(value, dict | list):
            text = json.dumps(value, sort_keys=True, separators=(", ", ": ")) if value else "-"
        else:
            text = "-" if value is None else str(value)
        lines.append(f"{key}: {text}")
    return "\n".join(lines)
