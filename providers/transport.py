"""Pooled HTTP sessions whose requests have a wall-clock deadline.

Why this exists: requests' read timeout applies to each socket read, so a provider that trickles
its answer (one byte every two seconds, headers or body) never trips it and holds a worker
thread for as long as it likes; a thread pool of 16 is frozen by 16 such answers, and Celery's
`time_limit` cannot stop a thread. No well-kept library gives requests a total deadline, so this
module adds the smallest one that works: while a request is in flight its socket is registered
with one watchdog thread, which shuts the socket down when the deadline passes. The blocked read
returns at once, requests raises, and the thread is free again.

    with deadline(30.0) as watch:       # the calling thread's requests are watched
        response = session.request(...)  # headers...
        body = read(response)            # ...and body, under the same deadline
    watch.expired                        # True if the watchdog cut the socket
"""

from __future__ import annotations

import contextlib
import heapq
import http.cookiejar
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager


@dataclass
class Watch:
    """One request's deadline; `expired` tells the caller why its read failed."""

    at: float
    expired: bool = False
    done: bool = False
    sockets: list[socket.socket] = field(default_factory=list)


class Watchdog:
    """One daemon thread for the whole process; it only wakes when a deadline is due."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch, sock: socket.socket) -> None:
        with self._cond:
            if watch.expired or time.monotonic() >= watch.at:  # late already: cut at once
                watch.expired = True
                _shutdown(sock)
                return
            if not watch.sockets:
                while self._heap and self._heap[0][2].done:  # finished: keep the heap small
                    heapq.heappop(self._heap)
                heapq.heappush(self._heap, (watch.at, next(self._seq), watch))
                self._start()
                if self._heap[0][2] is watch:  # else the thread already wakes up earlier
                    self._cond.notify()
            watch.sockets.append(sock)

    def finish(self, watch: Watch) -> None:
        with self._cond:
            watch.done = True
            watch.sockets.clear()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="http-deadline", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                if wait is None or wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, watch = heapq.heappop(self._heap)
                watch.expired = True
                for sock in watch.sockets:
                    _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    """Shut the descriptor itself down: on a TLS socket the reading thread then gets an error
    from its own read, without this thread touching the TLS state it is using."""
    with contextlib.suppress(OSError):  # already closed: nothing left to cut
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


WATCHDOG = Watchdog()
_current = threading.local()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Watch]:
    """Watch every connection this thread reads from until the block ends."""
    watch = Watch(time.monotonic() + seconds)
    _current.watch = watch
    try:
        yield watch
    finally:
        _current.watch = None
        WATCHDOG.finish(watch)
        watch.expired = watch.expired or time.monotonic() >= watch.at


def _watch_socket(conn: HTTPConnection) -> None:
    watch: Watch | None = getattr(_current, "watch", None)
    if watch is not None and conn.sock is not None:
        WATCHDOG.add(watch, conn.sock)


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:
        _watch_socket(self)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        _watch_socket(self)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# Kept connections per account and process: at least a worker's threads, or each request past it
# opens (and closes) a connection of its own. An unused slot costs nothing.
POOL_SIZE = 256

_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter with connections that report their socket to the watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self._watch(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        self._watch(manager)
        return manager

    @staticmethod
    def _watch(manager: PoolManager) -> None:
        manager.pool_classes_by_scheme = _POOLS


def session_for(base_url: str, pool_size: int = POOL_SIZE) -> requests.Session:
    """A pooled session that reads proxy and CA settings from the environment once, here:
    requests would otherwise walk the whole environment again on every request."""
    session = requests.Session()
    session.mount("http://", WatchedAdapter(pool_maxsize=pool_size))
    session.mount("https://", WatchedAdapter(pool_maxsize=pool_size))
    session.trust_env = False
    # Status APIs authenticate by header: a cookie a provider sets is neither kept nor sent
    # (a hostile one could otherwise grow the jar with every answer).
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.proxies = requests.utils.get_environ_proxies(base_url)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and base_url.lower().startswith("https:"):  # requests stats the path per request
        session.verify = bundle
    return session
