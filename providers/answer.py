"""What comes back from one request: its outcomes, its error as a whole, and the budget it stated.

httpx style: everything about an answer travels on the answer. A provider's rate-limit headers
(`X-RateLimit-*`) are read where the response is, and handed to the engine with the outcomes,
so no thread has to remember what the last answer it read said.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass

from export_poller.providers import errors
from export_poller.providers.models import Outcome

_RELATIVE_RESET = 1e9  # a Reset below this is seconds from now, not a Unix time
# The longest a provider's stated time is believed: a hostile or broken header (a year, or 400
# digits) would otherwise hold an account, or push an export past its deadline, for that long.
MAX_STATED_WAIT = 3600.0


@dataclass(frozen=True)
class Budget:
    """What a provider said about its account's request budget (`X-RateLimit-*`): `limit`
    per window, `remaining` in this one, and `reset_at`, the Unix time the window ends."""

    limit: int | None
    remaining: int
    reset_at: float


@dataclass(slots=True)
class Answer:
    """One request's answer. `outcomes` has one entry per id asked; when the request failed as
    a whole, `error` is that failure and every id's outcome is it. `budget` is what the answer
    stated about the account's budget, whatever its status (None: it stated none).

    Made once per request: a plain slotted class costs what the thread-local it replaces did
    (a frozen dataclass would cost three times as much)."""

    outcomes: dict[str, Outcome]
    error: errors.ProviderError | None = None
    budget: Budget | None = None


def read_budget(headers: Mapping[str, str], now: float | None = None) -> Budget | None:
    """The budget an answer states, if it states one (Seven Bridges does on every answer)."""
    now = time.time() if now is None else now
    remaining = _count(headers.get("X-RateLimit-Remaining"))
    reset_at = _reset_at(headers.get("X-RateLimit-Reset"), now)
    if remaining is None or reset_at is None:
        return None
    return Budget(_count(headers.get("X-RateLimit-Limit")), remaining, reset_at)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """`Retry-After` (seconds or an HTTP date) or `X-RateLimit-Reset`, as a wait of at most
    MAX_STATED_WAIT."""
    now = time.time() if now is None else now
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():  # any number of digits: never float("9" * 400), which is inf
        return MAX_STATED_WAIT if len(value) > 6 else min(float(value), MAX_STATED_WAIT)
    if value:
        try:
            at = email.utils.parsedate_to_datetime(value).timestamp()
            return min(max(0.0, at - now), MAX_STATED_WAIT)
        except (TypeError, ValueError, OverflowError):
            pass
    reset_at = _reset_at(headers.get("X-RateLimit-Reset"), now)
    return None if reset_at is None else max(0.0, reset_at - now)


def _reset_at(value: str | None, now: float) -> float | None:
    """`X-RateLimit-Reset` as a Unix time: Seven Bridges sends one; a small number is read as
    seconds from now, as some APIs send it. Capped at MAX_STATED_WAIT from now."""
    reset = _count(value)
    if reset is None:
        return None
    at = float(reset) if reset >= _RELATIVE_RESET else now + reset
    return min(at, now + MAX_STATED_WAIT)


def _count(value: str | None) -> int | None:
    text = (value or "").strip()
    return int(text) if text.isdigit() and len(text) < 16 else None
