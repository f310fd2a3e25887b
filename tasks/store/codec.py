"""How values travel between Python and Redis: compact text for hash fields and script
arguments, and back to str from what redis-py returns."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

Arg = str | int | float
# Hex digits kept of a SHA-1: short enough to keep a record a listpack, long enough (80 bits)
# never to collide. Idempotency digests and signature references both use it.
DIGEST_CHARS = 20


def digest(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:DIGEST_CHARS]


def idem_digest(account: str, export_id: str) -> str:
    """The key of an active (account, export id) in the idempotency index."""
    return digest(f"{account}\n{export_id}")


def encode(value: Any) -> str:
    """Compact text for a hash field: millisecond timestamps, JSON without spaces."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def pairs(fields: Mapping[str, Any]) -> list[Arg]:
    """A mapping as the flat name, value, name, value... that HSET and the scripts take."""
    out: list[Arg] = []
    for key, value in fields.items():
        out += [key, encode(value)]
    return out


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fields(flat: list[Any]) -> dict[str, str]:
    """A flat HGETALL reply from a script as a dict of str."""
    items = [text(x) for x in flat]
    return dict(zip(items[::2], items[1::2], strict=True))
