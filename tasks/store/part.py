"""The base of the store's parts: each is one set of Redis state and the scripts that change it."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from export_poller.store import codec
from export_poller.store.keys import Keys

# How often a script goes out again when what its caller read to name its keys changed in the
# meantime (another tracking took the idempotency entry, a record was replaced): each time
# needs a new race, so a few suffice.
REREADS = 5


class Part:
    """A client and the key names; parts compose into `Store` (and work on their own too)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys

    def _due_ids(self, reads: Sequence[tuple[str, float, int]]) -> list[list[str]]:
        """For each (account, by, most): up to `most` ids of the account's due index due by
        `by`, earliest first; one round trip. The scripts these ids go to check each again:
        the index may change before they run."""
        with self.r.pipeline(transaction=False) as pipe:
            for account, by, most in reads:
                pipe.zrangebyscore(self.keys.due(account), "-inf", by, start=0, num=most)
            replies = pipe.execute()
        return [[codec.text(x) for x in ids] for ids in replies]
