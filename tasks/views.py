"""The read side: an export's public record as a caller sees it, and the fleet's backlog.

Reads only, each bounded: a `list` of many exports reads an account's hold, pace and lag at most
once a second, not once per export.
"""

from __future__ import annotations

from typing import Any

from export_poller import clock, policy
from export_poller.account.guard import AccountGuard
from export_poller.config.settings import Settings
from export_poller.records import public_view
from export_poller.store import Store


class Views:
    def __init__(self, settings: Settings, store: Store, guard: AccountGuard | None) -> None:
        self.settings, self.store, self.guard = settings, store, guard
        self._holds_and_paces: dict[str, tuple[float, float | None, float | None]] = {}
        self._lag_view: tuple[float, dict[str, float]] = (float("-inf"), {})

    def get(self, tid: str) -> dict[str, Any] | None:
        """The public record; `account_held_until` shows a fleet-wide hold of its account."""
        fields = self.store.get(tid)
        if not fields:
            return None
        view = public_view(tid, fields)
        if self.guard is not None and view["state"] in policy.ACTIVE_STATES:
            view["account_held_until"], view["account_pace"] = self._hold_and_pace(
                fields["account"]
            )
        if view["state"] in policy.ACTIVE_STATES:
            view["account_lag"] = self._lags().get(fields["account"])
        return view

    def _lags(self) -> dict[str, float]:
        """Each account's lag as the last sweep saw it, read at most once a second."""
        now = clock.now()
        if self._lag_view[0] <= now:
            self._lag_view = (now + 1.0, self.store.account_lags())
        return self._lag_view[1]

    def backlog_view(self) -> dict[str, Any]:
        """The fleet's backlog for operators: poll messages in the broker (ready now, and all
        of them, countdowns included) against POLLER_BACKLOG_MAX, due polls still parked in
        Redis, and how late each account's most overdue poll is (`lag`, seconds)."""
        return {
            **self.store.backlog(clock.now()),
            "bound": self.settings.backlog_max,
            "lag": self.store.account_lags(),
        }

    def _hold_and_pace(self, account: str) -> tuple[float | None, float | None]:
        """An account's hold and pace for views, read at most once a second per account (a
        `list` of many exports must not read them once per export)."""
        now = clock.now()
        cached = self._holds_and_paces.get(account)
        if cached is None or cached[0] <= now or self.guard is None:
            held = self.guard.held_until(account, now) if self.guard else None
            pace = self.guard.pace(account, now) if self.guard else None
            cached = self._holds_and_paces[account] = (now + 1.0, held, pace)
        return cached[1], cached[2]
