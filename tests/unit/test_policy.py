"""The pure rules: how long to wait, when the last poll happens, which state an answer leads to."""

from __future__ import annotations

import pytest

from export_poller import policy
from export_poller.account import rules
from export_poller.providers import errors
from export_poller.providers.models import ExportStatus, Progress

B = policy.Backoff(initial=5, factor=2, maximum=300, floor=1)
NOW = 1000.0


def ctx(attempts: int = 1, deadline: float = NOW + 3600, **kw: object) -> policy.PollContext:
    return policy.PollContext(attempts=attempts, deadline=deadline, **kw)  # type: ignore[arg-type]


def test_backoff_ceiling_grows_exponentially_and_caps() -> None:
    assert [B.ceiling(n) for n in range(1, 8)] == [5, 10, 20, 40, 80, 160, 300]
    assert B.ceiling(10_000) == 300


@pytest.mark.parametrize("r", [0.0, 0.001, 0.5, 0.999, 1.0])
def test_full_jitter_stays_between_floor_and_ceiling(r: float) -> None:
    for attempt in range(1, 12):
        delay = B.delay(attempt, lambda: r)
        assert B.floor <= delay <= B.ceiling(attempt)


def test_jitter_spreads_polls_out() -> None:
    assert B.delay(4, lambda: 0.25) == 10.0
    assert B.delay(4, lambda: 0.75) == 30.0


def test_last_poll_is_placed_at_the_deadline() -> None:
    d = policy.decide(
        ctx(attempts=9, deadline=NOW + 7), ExportStatus(state="running"), NOW, B, rand=lambda: 1.0
    )
    assert d.state == "running" and d.next_poll_at == NOW + 7


def test_finished_just_before_the_deadline_is_completed_not_timed_out() -> None:
    d = policy.decide(ctx(deadline=NOW), ExportStatus(state="completed"), NOW + 0.5, B)
    assert d.state == "completed" and d.terminal and d.next_poll_at is None


def test_still_running_at_the_deadline_times_out() -> None:
    d = policy.decide(ctx(deadline=NOW), ExportStatus(state="running"), NOW, B)
    assert d.state == "timed_out" and d.next_poll_at is None


def test_provider_failure_is_failed_with_its_status() -> None:
    status = ExportStatus(state="failed", message="boom")
    d = policy.decide(ctx(), status, NOW, B)
    assert d.state == "failed" and d.status == status


def test_rate_limit_waits_as_told_and_does_not_count() -> None:
    d = policy.decide(
        ctx(attempts=3, state="running"),
        errors.RateLimited("slow", retry_after=42),
        NOW,
        B,
        rand=lambda: 0.0,
    )
    assert d.next_poll_at == NOW + 42 and not d.counted and d.state == "running"


def test_transient_errors_back_off_and_keep_the_state() -> None:
    d = policy.decide(
        ctx(attempts=3, state="running"), errors.ServerError("503"), NOW, B, rand=lambda: 1.0
    )
    assert d.state == "running" and d.next_poll_at == NOW + 20 and d.error is not None


@pytest.mark.parametrize("exc", [errors.NotFound("404"), errors.CredentialsRefused("401")])
def test_refusals_end_the_export_only_once_confirmed(exc: errors.Refused) -> None:
    first = policy.decide(ctx(refusals=0), exc, NOW, B, confirm_refusals=3)
    second = policy.decide(ctx(refusals=1), exc, NOW, B, confirm_refusals=3)
    third = policy.decide(ctx(refusals=2), exc, NOW, B, confirm_refusals=3)
    assert not first.terminal and not second.terminal
    assert third.state == "failed" and third.error and third.error["kind"] == exc.kind


@pytest.mark.parametrize(
    "whole",
    [
        errors.ServerError("503"),
        errors.Maintenance("maintenance"),
        errors.RateLimited("429", retry_after=1),
        errors.BadResponse("off-spec body"),
        errors.TransportError("timeout"),
    ],
)
def test_a_whole_request_failure_between_refusals_keeps_their_count(
    whole: errors.ProviderError,
) -> None:
    """404, a failure that says nothing about the id, 404, the same, 404: failed on the third."""
    refusals, state = 0, "running"
    for outcome in [errors.NotFound("404"), whole] * 2 + [errors.NotFound("404")]:
        d = policy.decide(ctx(refusals=refusals), outcome, NOW, B, confirm_refusals=3)
        refusals, state = d.refusals, d.state
    assert state == "failed" and refusals == 3


def test_a_good_answer_resets_refusals() -> None:
    d = policy.decide(ctx(refusals=2), ExportStatus(state="running"), NOW, B)
    assert d.refusals == 0


def running(done: int, total: int) -> ExportStatus:
    return ExportStatus(state="running", progress=Progress(completed=done, total=total))


LONG = policy.Backoff(initial=5, factor=2, maximum=3600, floor=1)


def test_progress_far_from_done_waits_longer_than_early_backoff_would() -> None:
    # 10% done after 600 s: about 5,400 s left. A quarter of that would be 1,350 s; an early
    # estimate is shaky, so the wait is capped at the time run so far (+ the floor): 601 s.
    d = policy.decide(
        ctx(attempts=3, started_at=NOW - 600), running(1, 10), NOW, LONG, rand=lambda: 1.0
    )
    assert d.next_poll_at == pytest.approx(NOW + 601)


def test_progress_waits_never_exceed_the_users_backoff_max() -> None:
    # The case: a ChaosSearch export with progress waited 95 s while the cap was 2 s.
    tight = policy.Backoff(initial=0.5, factor=2, maximum=2, floor=0.2)
    for done, elapsed in ((1, 380), (1, 600), (8, 400), (999, 10_000)):
        d = policy.decide(
            ctx(attempts=20, started_at=NOW - elapsed), running(done, 1000), NOW, tight
        )
        assert d.next_poll_at is not None and d.next_poll_at - NOW <= 2


def test_progress_near_the_end_closes_in_on_the_estimated_finish() -> None:
    # 80% done after 400 s: 100 s left; wait a quarter of it.
    d = policy.decide(
        ctx(attempts=20, started_at=NOW - 400), running(8, 10), NOW, LONG, rand=lambda: 1.0
    )
    assert d.next_poll_at == pytest.approx(NOW + 25)


def test_progress_waits_are_bounded_below_by_a_share_of_the_elapsed_time() -> None:
    # 99.9% done after 10,000 s: the estimate says 10 s left, but polls stay 100 s apart.
    d = policy.decide(ctx(attempts=20, started_at=NOW - 10_000), running(999, 1000), NOW, LONG)
    assert d.next_poll_at == pytest.approx(NOW + 100)


def test_without_usable_progress_backoff_decides() -> None:
    for status in (running(0, 10), running(10, 10), ExportStatus(state="running")):
        d = policy.decide(ctx(attempts=3, started_at=NOW - 100), status, NOW, B, rand=lambda: 1.0)
        assert d.next_poll_at == NOW + 20


def test_progress_waits_still_stop_at_the_deadline() -> None:
    d = policy.decide(
        ctx(attempts=2, deadline=NOW + 30, started_at=NOW - 600), running(1, 10), NOW, B
    )
    assert d.next_poll_at == NOW + 30


def test_callbacks_by_terminal_state() -> None:
    assert policy.callback_kind("completed") == "on_complete"
    assert policy.callback_kind("failed") == "on_failure"
    assert policy.callback_kind("timed_out") == "on_failure"
    assert policy.callback_kind("cancelled") is None


def test_trains_are_one_request_until_the_provider_has_been_timed() -> None:
    assert rules.train_size(None, seconds=1.0, most=50, batch_size=1) == 1
    assert rules.train_size(None, seconds=1.0, most=50, batch_size=100) == 100


def test_fast_providers_get_long_trains_and_slow_ones_short_ones() -> None:
    assert rules.train_size(0.002, seconds=1.0, most=50, batch_size=1) == 50  # capped
    assert rules.train_size(0.25, seconds=1.0, most=50, batch_size=1) == 4
    assert rules.train_size(5.0, seconds=1.0, most=50, batch_size=1) == 1  # never zero
    assert rules.train_size(0.002, seconds=1.0, most=50, batch_size=100) == 100  # one bulk call


def test_follow_ups_group_by_due_time_within_the_spread_and_the_cap() -> None:
    delays = [5.0, 0.2, 0.0, 5.5, 0.9, 7.0, 1.3]
    groups = policy.group_trains(delays, spread=1.0, most=3)
    assert groups == [[2, 1, 4], [6], [0, 3], [5]]
    for group in groups:
        assert max(delays[i] for i in group) - delays[group[0]] <= 1.0
    assert sorted(i for g in groups for i in g) == list(range(len(delays)))


def test_only_failures_one_id_could_cause_are_bisected() -> None:
    suspects = [
        errors.Rejected("400", status_code=400),
        errors.NotFound("404", status_code=404),
        errors.ServerError("500", status_code=500),
        errors.BadResponse("off-spec"),
    ]
    account_wide = [
        errors.CredentialsRefused("401", status_code=401),
        errors.CredentialsRefused("403", status_code=403),
        errors.RateLimited("429", retry_after=1),
        errors.Throttled("held", retry_after=1),
        errors.Maintenance("503 code 0", status_code=503),
        errors.TransportError("timeout"),
    ]
    assert all(rules.batch_suspect(e) for e in suspects)
    assert not any(rules.batch_suspect(e) for e in account_wide)


def test_bisecting_is_logarithmic_and_bounded() -> None:
    assert rules.bisect_allowance(1) == 0
    assert rules.bisect_allowance(2) == 4
    assert rules.bisect_allowance(100) == 28  # one poison id needs 2 x 7
    assert rules.halves([1, 2, 3]) == ([1, 2], [3])


def test_an_isolated_failure_is_a_refusal_only_while_the_provider_answers_others() -> None:
    exc = errors.ServerError("500", status_code=500)
    poisoned = rules.isolate(exc, neighbours_answered=True)
    assert isinstance(poisoned, errors.Poisoned) and poisoned.status_code == 500
    assert rules.isolate(exc, neighbours_answered=False) is exc  # maybe an outage
    refused = errors.Rejected("400", status_code=400)
    assert rules.isolate(refused, neighbours_answered=True) is refused  # already a refusal


def test_a_known_poison_id_failing_alone_again_confirms_its_refusal() -> None:
    exc = errors.BadResponse("off-spec")
    d = policy.decide(ctx(refusals=1, suspect=True), exc, NOW, B, confirm_refusals=2)
    assert d.state == "failed" and d.error and d.error["kind"] == "poisoned"
    d = policy.decide(ctx(refusals=1), exc, NOW, B, confirm_refusals=2)
    assert d.state == "pending" and d.error and d.error["kind"] == "bad_response"


def test_a_providers_wait_is_a_hard_not_before() -> None:
    d = policy.decide(ctx(), errors.RateLimited("429", retry_after=3), NOW, B)
    assert d.not_before == d.next_poll_at == NOW + 3 and not d.counted
    assert policy.decide(ctx(), errors.ServerError("500"), NOW, B).not_before is None
