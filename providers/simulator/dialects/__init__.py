"""The five provider dialects the simulator speaks, built from one set of options."""

from __future__ import annotations

import time

from export_poller.providers.simulator.dialects.base import Dialect, SingleJobDialect
from export_poller.providers.simulator.dialects.chaossearch import ChaosSearch
from export_poller.providers.simulator.dialects.cometly import Cometly
from export_poller.providers.simulator.dialects.saymon import Saymon
from export_poller.providers.simulator.dialects.sevenbridges import CGC, BioDataCatalyst
from export_poller.providers.simulator.options import SimulatorOptions
from export_poller.providers.simulator.sigv4 import SigV4Verifier


def build_dialects(options: SimulatorOptions) -> tuple[Dialect, ...]:
    """One instance per provider. SigV4 clock skew is judged against the real clock, since
    clients sign with it even when tests drive the simulated clock."""
    verifier = SigV4Verifier(options.aws_keys, options.region, service="s3", clock=time.time)
    return (
        ChaosSearch(verifier),
        Saymon(options.users),
        BioDataCatalyst(options.tokens),
        CGC(options.tokens),
        Cometly(options.tokens),
    )


__all__ = [
    "CGC",
    "BioDataCatalyst",
    "ChaosSearch",
    "Cometly",
    "Dialect",
    "Saymon",
    "SingleJobDialect",
    "build_dialects",
]
