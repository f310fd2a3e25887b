"""A worker's heartbeat: the accounts it serves, published to the roster while it runs.

Before it takes any work (`worker_init`) a worker checks every account it is configured with,
as `export-poller health` does, and refuses to start on a broken one. Once ready
(`worker_ready`, just before it says so) it publishes its entry, and again every
POLLER_HEARTBEAT_INTERVAL seconds from a daemon thread. The entry expires after three
intervals, so a killed worker drops out by itself; a worker that stops cleanly
(`worker_shutdown`) removes it at once.

Only this service's own workers publish: an application's worker that imports this package
sends the same signals, for its own app, and is not a poller.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import redis
from celery import signals

from export_poller import clock
from export_poller.config.settings import Settings, get_settings
from export_poller.store.fleet import Fleet, Worker

log = logging.getLogger("export_poller.heartbeat")

EXPIRY_INTERVALS = 3  # heartbeats a worker may miss (a busy Redis, a pause) before it drops out


def served_accounts(settings: Settings) -> dict[str, str]:
    """What a worker publishes: account name -> provider, never a credential."""
    return {name: account.provider for name, account in sorted(settings.accounts.items())}


def check_accounts(settings: Settings) -> None:
    """Refuse, naming the setting, an account whose settings cannot make a request: an
    unknown provider, or a credential or base URL the provider needs left unset."""
    from export_poller.account.request import ProviderPool

    pool = ProviderPool(settings)
    for name in sorted(settings.accounts):
        pool.get(name)


class Heartbeat:
    """Publishes one worker's entry now and every `interval` seconds until stopped."""

    def __init__(self, fleet: Fleet, name: str, accounts: dict[str, str], interval: float) -> None:
        self.fleet, self.name, self.accounts, self.interval = fleet, name, accounts, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        worker = Worker(self.name, self.accounts, socket.gethostname(), os.getpid(), clock.now())
        self.fleet.heartbeat(worker, self.interval * EXPIRY_INTERVALS)

    def start(self) -> None:
        """The first beat is sent before returning: the worker is in the roster when it says
        it is ready. Later beats come from a daemon thread."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="export-poller-heartbeat")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except redis.RedisError as exc:  # the next beat tries again; the entry outlives one
                log.warning("heartbeat not sent: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.fleet.leave(self.name)
        except redis.RedisError as exc:  # the entry expires on its own
            log.warning("roster entry not removed (it expires by itself): %s", exc)


_running: dict[str, Heartbeat] = {}


def _ours(sender: Any) -> bool:
    from export_poller.celery import app

    return getattr(sender, "app", None) is app


@signals.worker_init.connect
def _on_init(sender: Any = None, **_: Any) -> None:
    """Before the worker consumes anything: a broken account stops it here, by name."""
    if not _ours(sender):
        return
    try:
        check_accounts(get_settings())
    except ValueError as exc:  # a ConfigurationError: it names the setting, never its value
        log.critical("worker not started: %s", exc)
        raise SystemExit(f"export-poller worker not started: {exc}") from None


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    if not _ours(sender):
        return
    from export_poller.runtime import get_engine

    engine = get_engine()
    name = str(getattr(sender, "hostname", None) or f"worker@{socket.gethostname()}")
    accounts = served_accounts(engine.settings)
    heartbeat = Heartbeat(
        Fleet(engine.store.r, engine.store.keys), name, accounts, engine.settings.heartbeat_interval
    )
    heartbeat.start()
    _running[name] = heartbeat
    log.info("roster: %s serves %s", name, ", ".join(accounts) or "no account")


@signals.worker_shutdown.connect
def _on_shutdown(sender: Any = None, **_: Any) -> None:
    if not _ours(sender):
        return
    for name in list(_running):
        _running.pop(name).stop()
