"""The roster: the accounts the live workers serve, and what it means for a track call.

Only workers hold account settings and credentials; they publish the accounts they serve (name
and provider) with a heartbeat (`heartbeat.py`). A process that enqueues asks the roster, not
its own settings, whether an account can be polled: an account no live worker serves would sit
pending until its deadline, so it is refused at once, by name. The policy (`refusal`, `table`)
is pure; `Roster` adds the one read from Redis and a short cache.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from export_poller.config.brokers import redact_url
from export_poller.config.settings import Settings
from export_poller.providers import errors
from export_poller.store.fleet import Fleet, Worker

SHOWN = 10  # accounts named in a refusal; the CLI's `accounts` lists them all
CACHE_SECONDS = 1.0


def served(workers: Sequence[Worker]) -> dict[str, dict[str, list[str]]]:
    """account -> provider -> the live workers serving it as that provider."""
    out: dict[str, dict[str, list[str]]] = {}
    for worker in sorted(workers, key=lambda w: w.name):
        for account, provider in worker.accounts.items():
            out.setdefault(account, {}).setdefault(provider, []).append(worker.name)
    return out


def refusal(
    workers: Sequence[Worker], account: str, provider: str, where: str = ""
) -> errors.ConfigurationError | None:
    """Why `account` cannot be tracked at `provider` with these live workers, or None."""
    setting = f"POLLER_ACCOUNTS__{account.upper()}__PROVIDER={provider}"
    if not workers:
        place = f" on {where}" if where else ""
        return errors.UnknownAccount(
            f"account {account!r} cannot be tracked: no live worker{place}; start a worker "
            f"with {setting} and its credentials"
        )
    table = served(workers)
    providers = table.get(account)
    if providers is None:
        close = difflib.get_close_matches(account, list(table), n=1)
        hint = f"; did you mean {close[0]!r}? " if close else ": "
        return errors.UnknownAccount(
            f"unknown account {account!r}{hint}no live worker serves it (the live workers "
            f"serve {_offered(table)}); configure it on the workers with {setting} and its "
            "credentials"
        )
    if provider not in providers:
        return errors.ConfigurationError(
            f"account {account!r} is a {' and '.join(sorted(providers))} account, not {provider}"
        )
    if len(providers) > 1:
        split = "; ".join(f"{p} on {', '.join(ws)}" for p, ws in sorted(providers.items()))
        return errors.ConfigurationError(
            f"the live workers disagree on the provider of account {account!r} ({split}): "
            "give it one provider on every worker"
        )
    return None


def _offered(table: dict[str, dict[str, list[str]]]) -> str:
    names = [f"{a} ({', '.join(sorted(p))})" for a, p in sorted(table.items())]
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return (", ".join(names[:SHOWN]) or "no account") + more


def table(workers: Sequence[Worker]) -> list[dict[str, Any]]:
    """One row per (account, provider): its live workers and their latest heartbeat."""
    seen = {w.name: w.seen_at for w in workers}
    return [
        {"account": account, "provider": provider, "workers": names}
        | {"last_heartbeat": max(seen[n] for n in names)}
        for account, providers in sorted(served(workers).items())
        for provider, names in sorted(providers.items())
    ]


def where(settings: Settings) -> str:
    """Where this process looks for the fleet, for a message (the URL's password hidden)."""
    return f"{redact_url(settings.redis_url)} with key prefix {settings.key_prefix!r}"


class Roster:
    """The live roster as this process last read it: a burst of track calls costs one read a
    second or so. A refusal is never from the cache: the roster is read again first, so a
    worker that has just started is found."""

    def __init__(
        self,
        fleet: Fleet,
        where: str = "",
        max_age: float = CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet, self.where, self.max_age, self.monotonic = fleet, where, max_age, monotonic
        self._lock = threading.Lock()
        self._read: tuple[float, list[Worker]] | None = None

    def workers(self, *, fresh: bool = False) -> list[Worker]:
        with self._lock:
            read = self._read
            if fresh or read is None or self.monotonic() - read[0] > self.max_age:
                read = self._read = (self.monotonic(), self.fleet.live())
            return read[1]

    def check(self, account: str, provider: str) -> None:
        """Raise the refusal for `account` at `provider`, if the live workers give one."""
        if refusal(self.workers(), account, provider) is None:
            return
        error = refusal(self.workers(fresh=True), account, provider, self.where)
        if error is not None:
            raise error

    def serves(self, account: str) -> bool:
        return any(account in w.accounts for w in self.workers())
