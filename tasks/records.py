"""How a stored record is shown to users, callbacks and the CLI: typed, JSON-able, no internals."""

from __future__ import annotations

import json
from typing import Any

_FLOATS = ("created_at", "updated_at", "deadline", "next_poll_at", "finished_at", "callback_at")
_JSON = ("metadata", "status", "error")


def public_view(tid: str, fields: dict[str, str]) -> dict[str, Any]:
    """The record as `get_export` and callbacks see it: no poll token, lease or signatures."""
    view: dict[str, Any] = {
        "tracking_id": tid,
        "provider": fields.get("provider"),
        "account": fields.get("account"),
        "export_id": fields.get("export_id"),
        "state": fields.get("state"),
        "attempts": int(fields.get("attempts") or 0),
    }
    for name in _FLOATS:
        value = fields.get(name)
        view[name] = float(value) if value else None
    for name in _JSON:
        value = fields.get(name)
        view[name] = json.loads(value) if value else None
    if view["metadata"] is None:
        view["metadata"] = {}
    return view
