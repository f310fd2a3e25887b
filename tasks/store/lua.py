"""The one loader of the store's Redis scripts.

Each script is `scripts/<name>.lua` and opens with a comment header listing the KEYS and ARGV
it takes. Shared pieces are `scripts/lib/<piece>.lua`, pulled in where a line says
`--! include <piece>`; a piece may include others, and each lands once per script, before
the first line that needs it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from export_poller.store.codec import Arg

_INCLUDE = re.compile(r"^--! include ([a-z_]+)[ \t]*$", re.M)


def register(client: redis.Redis, name: str) -> Script:
    """The script `name`, registered with this client (EVALSHA, loaded again if flushed)."""
    return client.register_script(source(name))


class Batch:
    """Commands for one round trip (a pipeline), scripts among them as bare EVALSHA: redis-py's
    own pipelined scripts cost a SCRIPT EXISTS round trip first, every time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pipe = client.pipeline(transaction=False)
        self._scripts: dict[int, tuple[Script, Sequence[str], Sequence[Arg]]] = {}

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> None:
        self._scripts[len(self.pipe)] = (script, keys, args)
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)

    def execute(self) -> list[Any]:
        """The replies, in order. A script Redis did not know (restarted, flushed) did not run:
        it runs now, on its own (which loads it)."""
        with self.pipe:
            replies = self.pipe.execute(raise_on_error=False)
        for at, (script, keys, args) in self._scripts.items():
            if isinstance(replies[at], NoScriptError):
                replies[at] = script(keys=keys, args=args, client=self.client)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


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
