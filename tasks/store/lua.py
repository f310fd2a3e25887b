"""The one loader of the store's Redis scripts.

Each script is `scripts/<name>.lua` and opens with a comment header listing the KEYS and ARGV
it takes. Shared pieces are `scripts/lib/<piece>.lua`, pulled in where a line says
`--! include <piece>`; a piece may include others, and each lands once per script, before
the first line that needs it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

_INCLUDE = re.compile(r"^--! include ([a-z_]+)[ \t]*$", re.M)


def register(client: redis.Redis, name: str) -> Script:
    """The script `name`, registered with this client (EVALSHA, loaded again if flushed)."""
    return client.register_script(source(name))


@cache
def source(name: str) -> str:
    text = _read(name)
    header = text.split("\n\n", 1)[0]
    if not text.startswith("--") or "KEYS" not in header or "ARGV" not in header:
        raise ValueError(f"{name}.lua must open with a header listing its KEYS and ARGV")
    return _expand(text, set())


def _read(path: str) -> str:
    return (resources.files("export_poller.store") / "scripts" / f"{path}.lua").read_text()


def _expand(text: str, seen: set[str]) -> str:
    def piece(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _expand(_read(f"lib/{name}"), seen).rstrip("\n")

    return _INCLUDE.sub(piece, text)
