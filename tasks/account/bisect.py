"""Bulk bisection: finding the one id that fails a whole bulk request.

A bulk request that fails as a whole in a way one id could cause is split: its halves are asked
at once (they are not cut short by the train's time), so a poison id ends up alone and its
neighbours get their answers in O(log n) extra requests, within a bounded allowance of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from export_poller.account import rules
from export_poller.providers import errors
from export_poller.providers.models import Outcome
from export_poller.store import Claim

log = logging.getLogger("export_poller.poll")


@dataclass
class Bisection:
    """One failed bulk request being split: its allowance of extra requests, the ids of each of
    its parts that was not split further, the ids asked alone after a failure (the suspects),
    and whether any part was answered (the provider is up, so a suspect is the poison)."""

    allowance: int
    requests: list[list[str]] = field(default_factory=list)
    leaves: set[str] = field(default_factory=set)
    answered: bool = False


def split(
    chunk: list[Claim],
    whole: errors.ProviderError | None,
    group: Bisection | None,
    groups: list[Bisection],
) -> list[tuple[list[Claim], Bisection]] | None:
    """The two halves to ask next when a whole-request failure may be one id's fault."""
    if whole is None or not rules.batch_suspect(whole):
        return None
    if len(chunk) == 1:
        if group is not None:
            group.leaves.add(chunk[0].tracking_id)
        return None
    if group is None:
        group = Bisection(rules.bisect_allowance(len(chunk)))
        groups.append(group)
    if group.allowance < 2:
        return None
    group.allowance -= 2
    left, right = rules.halves(chunk)
    return [(left, group), (right, group)]


def note(group: Bisection, answers: dict[str, Outcome], whole: errors.ProviderError | None) -> None:
    """A part's answer, counted when its bisection is over, when we know what it was."""
    group.requests.append(list(answers))
    group.answered = group.answered or whole is None


def conclude(account: str, groups: list[Bisection], outcomes: dict[str, Outcome]) -> int:
    """Settle what bisecting found; returns the breaker failures among its requests (a
    poison id found alone is its export's refusal, not a failure)."""
    failures = 0
    for group in groups:
        for tid in group.leaves:
            outcomes[tid] = rules.isolate(outcomes[tid], neighbours_answered=group.answered)
            if isinstance(outcomes[tid], errors.Poisoned):
                log.warning("poison id isolated account=%s tracking_id=%s", account, tid)
        failures += sum(
            any(rules.counts_as_failure(outcomes[tid]) for tid in request)
            for request in group.requests
        )
    return failures
