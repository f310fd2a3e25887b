"""Run order for side-by-side runs (pytest-xdist): the longest tests start first.

The integration tier mostly waits on subprocesses and dominates the wall clock; a long test
that starts last would leave every other runner idle while it finishes. A test's own timeout
is the best hint of its length, so integration tests go first, longest timeout first, and the
unit tests fill in behind them.
"""

from __future__ import annotations

import pytest


def _start_order(item: pytest.Item) -> tuple[int, float]:
    if item.get_closest_marker("integration") is None:
        return (1, 0.0)
    timeout = item.get_closest_marker("timeout")
    return (0, -float(timeout.args[0]) if timeout and timeout.args else 0.0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_start_order)  # stable: the same order on every runner, as xdist requires
