"""A provider's stated wait is believed only within bounds: a broken or hostile header must not
hold an account for a year, push an export past its deadline, or crash the poll."""

from __future__ import annotations

import math

from export_poller import policy
from export_poller.providers import errors
from export_poller.providers.answer import MAX_STATED_WAIT, read_budget, retry_after_seconds

NOW = 1_800_000_000.0


def test_an_absurd_retry_after_is_capped_not_infinite() -> None:
    wait = retry_after_seconds({"Retry-After": "9" * 400}, now=NOW)
    assert wait == MAX_STATED_WAIT and math.isfinite(wait)
    assert retry_after_seconds({"Retry-After": "31536000"}, now=NOW) == MAX_STATED_WAIT
    assert retry_after_seconds({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, now=NOW) == (
        MAX_STATED_WAIT
    )


def test_a_small_reset_is_seconds_from_now_in_both_readings() -> None:
    headers = {"X-RateLimit-Reset": "30", "X-RateLimit-Remaining": "0", "X-RateLimit-Limit": "9"}
    assert retry_after_seconds(headers, now=NOW) == 30.0
    budget = read_budget(headers, now=NOW)
    assert budget is not None and budget.reset_at == NOW + 30


def test_a_reset_far_in_the_future_holds_for_at_most_the_cap() -> None:
    headers = {"X-RateLimit-Reset": str(int(NOW) + 10**9), "X-RateLimit-Remaining": "0"}
    budget = read_budget(headers, now=NOW)
    assert budget is not None and budget.reset_at == NOW + MAX_STATED_WAIT


def test_a_429_never_schedules_a_poll_past_the_deadline() -> None:
    ctx = policy.PollContext(attempts=1, deadline=NOW + 600, state="running")
    backoff = policy.Backoff(10, 2, 240, 1)
    limited = errors.RateLimited("slow down", retry_after=MAX_STATED_WAIT)
    decision = policy.decide(ctx, limited, NOW, backoff)
    assert decision.next_poll_at == NOW + 600 and not decision.terminal
    at_deadline = policy.decide(ctx, limited, NOW + 600, backoff)
    assert at_deadline.state == "timed_out"
