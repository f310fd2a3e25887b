"""A redis-py client for the store from its URL: plain, TLS, a socket, or through Sentinel.

redis-py reads redis://, rediss:// and unix:// URLs itself; a sentinel:// URL (kombu's form, so
the store and the broker can share one) lists the sentinels, and the master is found by the name
in POLLER_REDIS_SENTINEL_MASTER, again on every reconnect, so a failover is followed.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel

from export_poller.config.brokers import parse_sentinel
from export_poller.config.settings import Settings


def redis_client(settings: Settings, **options: Any) -> redis.Redis:
    url = settings.redis_url
    if urlsplit(url).scheme != "sentinel":
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel(url)
    master = settings.redis_sentinel_master
    if master is None:  # settings refuse this; kept for a direct caller
        raise ValueError("a sentinel:// URL needs POLLER_REDIS_SENTINEL_MASTER")
    sockets = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(list(target.hosts), **sockets)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(  # type: ignore[no-untyped-call]
        master, db=target.db, username=target.username, password=target.password, **options
    )
    return cast(redis.Redis, client)
