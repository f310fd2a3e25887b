"""The bench scripts' --plot code, on small synthetic results shaped as each script builds them:
the heavy benches are run by hand on a quiet machine, so a broken figure must show up here."""

from __future__ import annotations

from pathlib import Path

import pytest

# matplotlib is the `bench` extra's (CI installs it), not the test command's: ~100 MB that only
# these figures need.
pytest.importorskip("matplotlib")

from bench import plots


def side(polls_per_s: float, cpu: float) -> dict[str, float]:
    return {"polls_per_s": polls_per_s, "cpu_per_1000": cpu}


def drawn(path: Path) -> str:
    text = path.read_text()
    assert text.startswith("<?xml") and "</svg>" in text
    return text


def test_the_backoff_frontier_names_every_policy_it_was_given(tmp_path: Path) -> None:
    frontier = {
        "default backoff 10s x2 max 240s": {"requests": 15.7, "p50_lag": 53.0, "p95_lag": 173.0},
        "fixed 60s": {"requests": 22.5, "p50_lag": 28.0, "p95_lag": 57.0},
    }
    progress = {
        "progress_aware": {"requests": 19.4, "p50_lag": 2.0, "p95_lag": 39.8},
        "plain": {"name": "backoff max 45s", "requests": 59.2, "p50_lag": 12.0, "p95_lag": 35.0},
        "ratio": 3.04,
    }
    text = drawn(plots.backoff_frontier(frontier, progress, tmp_path / "f.svg"))
    for label in ("default backoff 10s x2 max 240s", "fixed 60s", "3.0x fewer requests"):
        assert label in text


def test_the_latency_figure_draws_every_side_at_every_delay(tmp_path: Path) -> None:
    rows = [
        {"delay_ms": d, "concurrency": 200, "bare": side(440, 2.2),
         "bare_default": side(400, 2.4), "worker": side(391, 2.21)}
        for d in (100, 200, 500)
    ]  # fmt: skip
    text = drawn(plots.latency_cost(rows, tmp_path / "latency.svg"))
    assert "200 requests in flight" in text
    assert all(label in text for label in plots.SIDES.values())


def test_the_overload_figure_marks_the_printed_percentiles(tmp_path: Path) -> None:
    out = {
        "seconds": 300.0,
        "requests": 12055,
        "small": {"lag_p50_s": 2.4, "lag_p95_s": 4.8},
        "big": {"lag_p50_s": 50.0, "lag_p95_s": 70.0},
    }
    lags = {"small": [1.0, 2.4, 3.0, 4.8], "big": [40.0, 50.0, 70.0]}
    path = plots.overload_lag(out, lags, [0, 25, 50, 10], [16, 20, 26, 5], tmp_path / "o.png")
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", ["backoff_sim.py", "latency.py", "overload.py"])
def test_each_bench_script_offers_the_plot_option(name: str) -> None:
    source = (Path(__file__).resolve().parents[2] / "bench" / name).read_text()
    assert '"--plot"' in source and "from bench import plots" in source
