"""Validation of `POST /_sim/jobs` specs into `Job`s: strict, so a typo in a test's job spec
is a 400 naming the field rather than a silently different simulation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from export_poller.providers.simulator.faults import fault_list
from export_poller.providers.simulator.fields import (
    SpecError,
    as_object,
    check_keys,
    get_float,
    get_int,
    get_str,
)
from export_poller.providers.simulator.jobs import Job, Outcome, PollPlan, TimePlan
from export_poller.providers.simulator.options import PROVIDERS

MAX_ID_LENGTH = 512
SPEC_KEYS = (
    "provider",
    "id",
    "outcome",
    "pending_polls",
    "running_polls",
    "duration_s",
    "partitions",
    "owner",
    "faults",
    "poison",
)
POISON_KINDS = ("400", "500", "garbage")
"""How a CGC bulk request naming a poison job fails as a whole: 400, 500 or an off-spec 200."""


def _poison(spec: Mapping[str, Any], provider: str) -> str | None:
    value = get_str(spec, "poison")
    if value is None:
        return None
    if provider != "cgc":
        raise SpecError("poison exists for cgc (bulk requests) only")
    if value not in POISON_KINDS:
        raise SpecError(f"poison must be one of {list(POISON_KINDS)}, got {value!r}")
    return value


def _plan(spec: Mapping[str, Any]) -> PollPlan | TimePlan:
    if "duration_s" in spec:
        if "pending_polls" in spec or "running_polls" in spec:
            raise SpecError("give either duration_s or pending_polls/running_polls, not both")
        return TimePlan(get_float(spec, "duration_s", 0.0))
    return PollPlan(get_int(spec, "pending_polls", 1), get_int(spec, "running_polls", 1))


def _outcome(spec: Mapping[str, Any]) -> Outcome:
    value = spec.get("outcome", "completed")
    if value == "completed":
        return "completed"
    if value == "failed":
        return "failed"
    raise SpecError(f"outcome must be 'completed' or 'failed', got {value!r}")


def normalize_id(provider: str, value: object) -> str:
    """The stored form of a job id: Cometly's are positive integers, the rest opaque strings."""
    if provider == "cometly":
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        if not text.isdecimal() or not text.isascii() or int(text) < 1:
            raise SpecError(f"cometly export ids are positive integers, got {value!r}")
        return str(int(text))
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH:
        raise SpecError(f"id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    if "/" in value or any(ord(char) < 32 for char in value):
        raise SpecError("id must not contain '/' or control characters")
    return value


def provider_of(spec: Mapping[str, Any]) -> str:
    provider = spec.get("provider")
    if provider not in PROVIDERS:
        raise SpecError(f"provider must be one of {list(PROVIDERS)}, got {provider!r}")
    return str(provider)


def build_job(
    data: object, *, job_id: str, now: float, owners: Mapping[str, frozenset[str]]
) -> Job:
    """Validate a `POST /_sim/jobs` spec into a job; the caller has chosen the id already."""
    spec = as_object(data, "job")
    check_keys(spec, SPEC_KEYS, "job")
    provider = provider_of(spec)
    owner = get_str(spec, "owner")
    if owner is not None and owner not in owners.get(provider, frozenset()):
        raise SpecError(f"owner {owner!r} is not a credential configured for {provider}")
    return Job(
        provider=provider,
        id=job_id,
        outcome=_outcome(spec),
        plan=_plan(spec),
        partitions=get_int(spec, "partitions", 10, minimum=1),
        owner=owner,
        faults=fault_list(spec.get("faults"), provider),
        created_at=now,
        poison=_poison(spec, provider),
    )
