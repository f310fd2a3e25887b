"""Pure rules of an account: its breaker, its trains, bulk bisection, budgets and pace.

Like `export_poller.policy`, nothing here touches Redis, HTTP or the clock: the gate, the guard
and the train runner apply these rules to what they read, and they are tested on their own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from export_poller.providers import errors
from export_poller.providers.answer import Budget
from export_poller.providers.models import Outcome

T = TypeVar("T")


# -- the breaker ---------------------------------------------------------------------------------


def breaker_trips(total: int, failures: int, *, min_calls: int, ratio: float) -> bool:
    """An account's breaker opens when most of enough recent answers were 5xx or timeouts."""
    return total >= min_calls and failures >= ratio * total


def breaker_cooldown(trips: int, *, base: float, maximum: float) -> float:
    """Each trip in a row doubles the pause, so a provider that stays down is asked rarely."""
    return float(min(maximum, base * 2 ** min(max(trips - 1, 0), 32)))


# -- trains --------------------------------------------------------------------------------------


def train_size(
    seconds_per_request: float | None, *, seconds: float, most: int, batch_size: int
) -> int:
    """How many exports one poll task takes on: as many requests as fit in `seconds`.

    One message per export costs the broker and the worker more than a fast provider's answer,
    so polls of one account ride together; a slow provider gets short trains so due exports
    are not left queueing behind each other. Unmeasured, a train is one request.
    """
    fits = 1 if seconds_per_request is None else int(seconds / max(seconds_per_request, 1e-6))
    return min(max(1, min(fits, most)) * batch_size, max(most, batch_size))


# -- bulk requests: finding the one id that fails a whole request ------------------------------


def batch_suspect(exc: errors.ProviderError) -> bool:
    """Whether a whole bulk request's failure may be one id's fault, so splitting it can help.

    A 4xx other than 401/403/429, a 5xx or an off-spec body may come from one bad id; refused
    credentials, rate limits, maintenance and a silent network speak for the whole account.
    """
    if isinstance(exc, errors.CredentialsRefused | errors.Maintenance | errors.RateLimited):
        return False
    return isinstance(exc, errors.Refused | errors.ServerError | errors.BadResponse)


def bisect_allowance(size: int) -> int:
    """Extra requests a failed bulk request of `size` ids may cost while it is bisected: two
    per level finds one poison id in O(log n), and the allowance covers two; an outage that fails
    every half therefore costs a bounded number of requests, not 2n."""
    return 0 if size <= 1 else 4 * math.ceil(math.log2(size))


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """Consecutive pieces of at most `size`: requests of a train, trains of a message."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def halves(items: Sequence[T]) -> tuple[list[T], list[T]]:
    middle = (len(items) + 1) // 2
    return list(items[:middle]), list(items[middle:])


def isolate(exc: Outcome, *, neighbours_answered: bool) -> Outcome:
    """What one id's own failed request means once bisecting reached it alone.

    If other parts of the same bulk request were answered, the provider is up and this id is
    what fails it: a refusal of this export (confirmed like any other), never a breaker
    failure. If nothing was answered, it may be an outage: the error stands as it is.
    """
    if not isinstance(exc, errors.ProviderError) or not neighbours_answered:
        return exc
    if isinstance(exc, errors.Refused) or not batch_suspect(exc):
        return exc
    return errors.Poisoned(
        f"{exc.message} (this export alone makes the bulk request fail)",
        status_code=exc.status_code,
    )


def counts_as_failure(outcome: Outcome) -> bool:
    """An answer the breaker counts against the provider: 5xx or no answer at all."""
    return isinstance(outcome, errors.ServerError | errors.TransportError)


# -- pacing: staying inside an account's budget ---------------------------------------------------

BUDGET_RESERVE_SHARE = 0.03


def budget_hold(remaining: int, limit: int | None, reset_at: float, now: float) -> float | None:
    """When a provider states its budget, the time to hold the account until, or None.

    The fleet spends the window's budget and stops when what is left is a small reserve (3%
    of the limit, at least one request): requests other workers already have in flight land
    in the reserve instead of drawing a 429. It resumes when the window resets.
    """
    reserve = max(1, math.ceil((limit or 0) * BUDGET_RESERVE_SHARE))
    if remaining > reserve or reset_at <= now:
        return None
    return reset_at


# Where a provider states no budget, a 429 is all it says. The fleet then learns a pace, as the
# AWS SDKs' adaptive retry mode does: a 429 cuts the rate to 70% of what was being sent
# (multiplicative decrease), and the rate grows back by 4% of that per second while no 429
# comes (additive increase), probing for the limit again. A pace not cut for ten minutes is
# forgotten.
PACE_DECREASE = 0.7
PACE_GROWTH = 0.04
PACE_MEMORY = 600.0
PACE_MIN = 0.05  # requests per second: a pace never stops an account altogether


def paced_rate(rate: float, since: float, now: float) -> float:
    """The pace now, `now - since` seconds after a 429 set it to `rate` requests per second."""
    return rate * (1.0 + PACE_GROWTH * max(0.0, now - since))


def slowed_rate(current: float | None, sent: float) -> float:
    """The pace after a 429: 70% of what the fleet was sending (or of its pace, if lower)."""
    base = sent if current is None else min(current, sent)
    return max(PACE_MIN, PACE_DECREASE * base)


def sent_rate(calls: int, since: float, now: float) -> float:
    """Requests per second the fleet sent: the breaker's count of them since `since`, the
    first count of the oldest window that has one (at least a second, so a first burst reads
    high, not infinite; a pace set too high is cut again by the next 429)."""
    return calls / max(1.0, now - since)


def pace_tolerance(rate: float) -> float:
    """Seconds of burst a pace allows: about one second's worth of requests, at least one."""
    return max(1.0 / rate, 1.0)


def stated_waits(outcomes: Iterable[Outcome]) -> list[float]:
    """The waits a provider's 429s stated (our own holds, `Throttled`, are not its word)."""
    return [
        o.retry_after
        for o in outcomes
        if isinstance(o, errors.RateLimited) and not isinstance(o, errors.Throttled)
    ]


def calm(
    answers: dict[str, Outcome],
    whole: errors.ProviderError | None,
    budget: Budget | None,
    wave: int,
) -> bool:
    """An answer after which a train may send a whole wave: no error of the request, no
    failure or 429 of an export, and a stated budget (if any) with room for a few waves."""
    if whole is not None or (budget is not None and budget.remaining < 4 * wave):
        return False
    return not any(isinstance(o, errors.ProviderError) for o in answers.values())
