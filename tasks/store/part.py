"""The base of the store's parts: each is one set of Redis state and the scripts that change it."""

from __future__ import annotations

import redis

from export_poller.store.keys import Keys


class Part:
    """A client and the key names; parts compose into `Store` (and work on their own too)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys
