"""Issue 21, fair share "the last second of it", from the issue text and the README only.

One Cometly account (``big``) tracks 3,000 exports, another (``small``) 10. The fake provider
answers every status request "processing" after 200 ms and serves any number at once, so the
exports never end during the run. One worker of 16 threads, beat, backoff ceiling 1 s
(``POLLER_BACKOFF_INITIAL=1``, ``POLLER_BACKOFF_MAX=1``), every other setting at its default
(waves of 8 included). Over a 60 s window after a warm-up, the gaps between consecutive polls of
each of small's exports are measured at the provider; the issue's goal is a median of at most
3 s (measured independently before the fix: 4.0 s, p95 4.2 s).

It is a test (``-m slow``: it takes about two minutes) and a bench script at once:
``.venv/bin/python tests/integration/independent/test_issue21_fair_share.py [--window S]``
(any interpreter with the dev install) prints the same figures, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.integration.independent.harness_issue21 import (
    COMETLY_PATH,
    FakeServer,
    bearer,
    cometly_body,
    running_stack,
    send,
    wait_until,
)

BIG_N = 3000
SMALL_N = 10
BIG_FIRST = 1_000_000
SMALL_FIRST = 9_000_000
ANSWER_DELAY = 0.2
CONCURRENCY = 16
WINDOW = 60.0
WARMUP = 15.0  # s after small is tracked, and until each small export has been polled twice
GOAL_MEDIAN = 3.0
SETTINGS = {"POLLER_BACKOFF_INITIAL": "1", "POLLER_BACKOFF_MAX": "1"}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


class FakeSlowCometly:
    """Seed 003's status call, always "processing", answered ``ANSWER_DELAY`` s after arrival."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens  # token -> account
        self.lock = threading.Lock()
        self.by_export: dict[str, list[float]] = defaultdict(list)
        self.by_account: dict[str, int] = defaultdict(int)
        self.answer_times: list[float] = []  # arrival to answer written, per request
        self.server = FakeServer(self.handle)
        self.base_url = self.server.base_url

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        now = time.time()
        m = COMETLY_PATH.match(h.path.split("?", 1)[0])
        account = self.tokens.get(bearer(h))
        if h.command != "GET" or not m or account is None:
            send(h, 401 if m else 404, {"message": "Missing or invalid API key"})
            return
        with self.lock:
            self.by_export[m.group(1)].append(now)
            self.by_account[account] += 1
        if self.server.stopping.wait(ANSWER_DELAY):
            return
        send(h, 200, cometly_body(m.group(1), "processing"))
        with self.lock:
            self.answer_times.append(time.time() - now)

    def times(self, export_id: int) -> list[float]:
        with self.lock:
            return list(self.by_export.get(str(export_id), []))

    def count(self, account: str) -> int:
        with self.lock:
            return self.by_account[account]

    def answer_time_quantiles(self) -> tuple[float, float]:
        with self.lock:
            values = list(self.answer_times)
        return (statistics.median(values), _p95(values)) if values else (0.0, 0.0)

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Figures:
    window: float
    gaps: list[float]
    median: float
    p95: float
    small_polls: int
    big_polls: int
    starved: int  # small exports polled fewer than twice in the window
    longest_open: float  # longest time from a small export's last poll to the window's end
    track_seconds: float
    answer_time: tuple[float, float]  # the fake's own median and p95, to show it kept up

    def line(self) -> str:
        return (
            f"small account: median gap between polls {self.median:.2f} s, p95 {self.p95:.2f} s "
            f"(max {max(self.gaps):.2f} s, {len(self.gaps)} gaps, {self.starved} exports starved, "
            f"longest open gap at the end {self.longest_open:.2f} s); window {self.window:.0f} s: "
            f"small {self.small_polls} polls, big {self.big_polls} "
            f"({self.big_polls / self.window:.0f}/s); tracking 3,010 exports took "
            f"{self.track_seconds:.1f} s; the fake answered in {self.answer_time[0]:.3f} s "
            f"(median), {self.answer_time[1]:.3f} s (p95)"
        )


def measure(tmp: Path, window: float = WINDOW) -> Figures:
    tokens = {f"big-{uuid.uuid4().hex}": "big", f"small-{uuid.uuid4().hex}": "small"}
    fake = FakeSlowCometly(tokens)
    accounts = {
        name: {"PROVIDER": "cometly", "TOKEN": token, "BASE_URL": fake.base_url}
        for token, name in tokens.items()
    }
    try:
        with running_stack(tmp, accounts, dict(SETTINGS)) as stack:
            stack.start_worker(concurrency=CONCURRENCY)
            stack.start_beat()
            t0 = time.time()
            big = [
                {"provider": "cometly", "account": "big", "export_id": str(i), "bare": True}
                for i in range(BIG_FIRST, BIG_FIRST + BIG_N)
            ]
            stack.track(big)
            small_ids = list(range(SMALL_FIRST, SMALL_FIRST + SMALL_N))
            small = [
                {"provider": "cometly", "account": "small", "export_id": str(i), "bare": True}
                for i in small_ids
            ]
            small_tracked = stack.track(small)[-1][1]
            track_seconds = small_tracked - t0

            def warm() -> bool:
                stack.check_alive()
                return time.time() >= small_tracked + WARMUP and all(
                    len(fake.times(i)) >= 2 for i in small_ids
                )

            wait_until(warm, WARMUP + 90, "every small export polled twice", stack.diag, 0.5)
            w0 = time.time()
            big0, small0 = fake.count("big"), fake.count("small")
            end = w0 + window
            while time.time() < end:  # the measurement window; the worker must stay up
                stack.check_alive()
                time.sleep(min(1.0, max(0.0, end - time.time())))
            w1 = time.time()
            big_polls, small_polls = fake.count("big") - big0, fake.count("small") - small0
            stack.check_alive()
    finally:
        fake.stop()

    gaps: list[float] = []
    starved = 0
    longest_open = 0.0
    for i in small_ids:
        inside = sorted(t for t in fake.times(i) if w0 <= t <= w1)
        if len(inside) < 2:
            starved += 1
            gaps.append(w1 - w0)
        else:
            gaps += [b - a for a, b in itertools.pairwise(inside)]
        longest_open = max(longest_open, w1 - (inside[-1] if inside else w0))
    return Figures(
        window=w1 - w0,
        gaps=gaps,
        median=statistics.median(gaps),
        p95=_p95(gaps),
        small_polls=small_polls,
        big_polls=big_polls,
        starved=starved,
        longest_open=longest_open,
        track_seconds=track_seconds,
        answer_time=fake.answer_time_quantiles(),
    )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_small_account_median_gap_is_at_most_three_seconds_beside_a_big_one(
    tmp_path: Path,
) -> None:
    figures = measure(tmp_path)
    print(figures.line())
    assert figures.big_polls > 10 * figures.small_polls, (
        f"big did not saturate the worker: {figures.line()}"
    )
    assert figures.starved == 0, figures.line()
    assert figures.median <= GOAL_MEDIAN, (
        f"the small account's median gap between polls is {figures.median:.2f} s, over the "
        f"issue's goal of {GOAL_MEDIAN:.1f} s; {figures.line()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=WINDOW, help="seconds measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="i21-fair-") as tmp:
        figures = measure(Path(tmp), args.window)
    print(figures.line())
    print(f"median {figures.median:.2f} s  p95 {figures.p95:.2f} s  (goal: median <= 3.0 s)")


if __name__ == "__main__":
    main()
