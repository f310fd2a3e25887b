"""Injected failures: which status request fails and how.

Per-job faults fire at chosen poll numbers (deterministic tests) or with a probability; global
faults hit any status request with a probability. All randomness comes from one seeded generator
so that a benchmark or a soak run can be replayed with the same seed.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from export_poller.providers.simulator.fields import (
    SpecError,
    as_object,
    check_keys,
    get_float,
    get_int,
    get_str_list,
)
from export_poller.providers.simulator.options import PROVIDERS

FAULT_KINDS = frozenset({"429", "503", "500", "garbage", "slow", "404", "401", "reset", "redirect"})
"""`reset` drops the connection unanswered; `redirect` is ChaosSearch's 307 and nobody else's."""

DEFAULT_GLOBAL_KINDS: tuple[str, ...] = ("503", "500", "garbage")
MAX_DELAY_S = 300.0
_JOB_FAULT_KEYS = ("kind", "polls", "rate", "retry_after", "delay_s")
_GLOBAL_KEYS = ("rate", "kinds", "providers", "retry_after", "delay_s", "seed")


@dataclass(frozen=True)
class Fault:
    """One way to fail. `polls` (1-based poll numbers of a job) wins over `rate` when given."""

    kind: str
    polls: frozenset[int] = frozenset()
    rate: float = 0.0
    retry_after: int = 1
    delay_s: float = 1.0

    def fires(self, poll: int, rng: random.Random) -> bool:
        if self.polls:
            return poll in self.polls
        return rng.random() < self.rate


@dataclass(frozen=True)
class GlobalFaults:
    """The `POST /_sim/faults` setting; `providers` empty means every provider."""

    rate: float = 0.0
    kinds: tuple[str, ...] = DEFAULT_GLOBAL_KINDS
    providers: frozenset[str] = frozenset()
    retry_after: int = 1
    delay_s: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "kinds": list(self.kinds),
            "providers": sorted(self.providers),
            "retry_after": self.retry_after,
            "delay_s": self.delay_s,
        }


def _kind(value: object, provider: str | None) -> str:
    kind = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if kind not in FAULT_KINDS:
        raise SpecError(f"fault kind must be one of {sorted(FAULT_KINDS)}, got {value!r}")
    if kind == "redirect" and provider not in (None, "chaossearch"):
        raise SpecError("fault kind 'redirect' exists for chaossearch only")
    return kind


def _polls(value: object) -> frozenset[int]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not value:
        raise SpecError(f"fault polls must be a non-empty list of poll numbers, got {value!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value):
        raise SpecError(f"fault polls are 1-based integers, got {value!r}")
    return frozenset(value)


def parse_fault(data: object, provider: str) -> Fault:
    """Read one entry of a job's `faults` list."""
    spec = as_object(data, "fault")
    check_keys(spec, _JOB_FAULT_KEYS, "fault")
    polls = _polls(spec.get("polls"))
    if not polls and "rate" not in spec:
        raise SpecError("a fault needs 'polls' (1-based poll numbers) or 'rate' (probability)")
    return Fault(
        kind=_kind(spec.get("kind"), provider),
        polls=polls,
        rate=get_float(spec, "rate", 0.0, maximum=1.0),
        retry_after=get_int(spec, "retry_after", 1),
        delay_s=get_float(spec, "delay_s", 1.0, maximum=MAX_DELAY_S),
    )


def parse_global(data: object) -> tuple[GlobalFaults, int | None]:
    """Read a `POST /_sim/faults` body; also returns the optional new seed."""
    spec = as_object(data, "faults")
    check_keys(spec, _GLOBAL_KEYS, "faults")
    kinds = tuple(_kind(kind, None) for kind in get_str_list(spec, "kinds", DEFAULT_GLOBAL_KINDS))
    providers = frozenset(get_str_list(spec, "providers", ()))
    if not kinds or not providers <= set(PROVIDERS):
        raise SpecError(f"kinds must be non-empty and providers among {list(PROVIDERS)}")
    seed = spec.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpecError(f"seed must be an integer, got {seed!r}")
    faults = GlobalFaults(
        rate=get_float(spec, "rate", 0.0, maximum=1.0),
        kinds=kinds,
        providers=providers,
        retry_after=get_int(spec, "retry_after", 1),
        delay_s=get_float(spec, "delay_s", 1.0, maximum=MAX_DELAY_S),
    )
    return faults, seed


class FaultPlan:
    """Chooses the fault (if any) for one status request; safe to call from many threads."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._global = GlobalFaults()

    @property
    def current(self) -> GlobalFaults:
        return self._global

    def configure(self, faults: GlobalFaults, seed: int | None = None) -> None:
        with self._lock:
            self._global = faults
            if seed is not None:
                self._seed = seed
                self._rng.seed(seed)

    def reset(self) -> None:
        """Back to no global faults and the initial seed, so a reset run replays identically."""
        with self._lock:
            self._global = GlobalFaults()
            self._rng.seed(self._seed)

    def choose(
        self,
        provider: str,
        polled: Sequence[tuple[Sequence[Fault], int]],
        *,
        allow_redirect: bool,
    ) -> Fault | None:
        """Per-job faults first (each job with its poll number), then the global rate.

        A request that already followed a redirect is never redirected again, so a client that
        follows redirects cannot loop.
        """
        with self._lock:
            for faults, poll in polled:
                for fault in faults:
                    if fault.kind == "redirect" and not allow_redirect:
                        continue
                    if fault.fires(poll, self._rng):
                        return fault
            return self._global_fault(provider, allow_redirect)

    def _global_fault(self, provider: str, allow_redirect: bool) -> Fault | None:
        settings = self._global
        if settings.rate <= 0 or (settings.providers and provider not in settings.providers):
            return None
        redirect_ok = allow_redirect and provider == "chaossearch"
        kinds = [kind for kind in settings.kinds if redirect_ok or kind != "redirect"]
        if not kinds or self._rng.random() >= settings.rate:
            return None
        return Fault(
            kind=self._rng.choice(kinds),
            retry_after=settings.retry_after,
            delay_s=settings.delay_s,
        )


def fault_list(data: object, provider: str) -> tuple[Fault, ...]:
    """Read a job's optional `faults` list."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise SpecError(f"faults must be a list, got {type(data).__name__}")
    return tuple(parse_fault(item, provider) for item in data)
