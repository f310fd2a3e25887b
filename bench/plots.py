"""Figures of the benchmarks page, drawn from the very numbers a bench script prints.

Each function takes the result a script already builds (what `--json` prints) and writes one
image (SVG or PNG, by the path's suffix). matplotlib is imported here only, with the Agg
backend, so the scripts run without it unless `--plot` is given (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SIDES = {"bare": "bare requests loop", "bare_default": "default Session()", "worker": "worker"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "export-poller", "font.size": 9})
    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # no date in the metadata, so drawing the same numbers again gives the same file
    metadata = {"Date": None} if path.suffix == ".svg" else {}
    fig.savefig(path, bbox_inches="tight", metadata=metadata)
    fig.clf()
    return path


def backoff_frontier(
    frontier: Mapping[str, Mapping[str, float]], progress: Mapping[str, Any], path: Path
) -> Path:
    """Requests per export against detection lag, one point per policy (backoff_sim.py)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), width_ratios=[3, 2])
    for name, row in frontier.items():
        default = name.startswith("default")
        style = {"color": "C3" if default else ("C1" if name.startswith("fixed") else "C0")}
        left.plot([row["requests"]] * 2, [row["p50_lag"], row["p95_lag"]], lw=1, **style)
        left.scatter(row["requests"], row["p95_lag"], s=40 if default else 18, **style)
        left.scatter(row["requests"], row["p50_lag"], s=12, marker="_", **style)
        left.annotate(
            name,
            (row["requests"], row["p95_lag"]),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    left.set(
        xscale="log",
        xlabel="requests per export (log scale)",
        ylabel="detection lag (s): p95 dot, p50 tick",
        title="Plain backoff and fixed polling (blue: backoff, orange: fixed, red: default)",
    )
    left.title.set_size(8)
    aware, plain = progress["progress_aware"], progress["plain"]
    names = ["progress-aware\n(default backoff)", f"cheapest plain\n{plain['name']}"]
    bars = right.bar(names, [aware["requests"], plain["requests"]], color=["C2", "C0"])
    for bar, row in zip(bars, (aware, plain), strict=True):
        right.annotate(
            f"p95 lag {row['p95_lag']:.1f} s",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    right.set(
        ylabel="requests per export",
        title=f"Jobs reporting progress: {progress['ratio']:.1f}x fewer requests",
    )
    right.title.set_size(8)
    return _save(fig, path)


def latency_cost(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """CPU per 1,000 polls and polls/s against the provider's answer time (latency.py)."""
    plt = _pyplot()
    fig, (cpu, rate) = plt.subplots(1, 2, figsize=(10, 3.8))
    delays = [row["delay_ms"] for row in rows]
    for side, label in SIDES.items():
        cpu.plot(delays, [r[side]["cpu_per_1000"] for r in rows], marker="o", label=label)
        rate.plot(delays, [r[side]["polls_per_s"] for r in rows], marker="o", label=label)
    in_flight = rows[0]["concurrency"] if rows else 0
    cpu.set(
        xlabel="provider answer time (ms)",
        ylabel="CPU seconds per 1,000 polls",
        title=f"Cost per poll, {in_flight} requests in flight",
    )
    rate.set(xlabel="provider answer time (ms)", ylabel="polls per second", title="Throughput")
    for axis in (cpu, rate):
        axis.set_xticks(delays)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    return _save(fig, path)


def overload_lag(
    out: Mapping[str, Any],
    lags: Mapping[str, Sequence[float]],
    queue: Sequence[int],
    unacked: Sequence[int],
    path: Path,
    every: float = 0.25,
) -> Path:
    """Each account's poll lag (the samples behind the printed p50/p95) and the broker's
    backlog over the run (overload.py)."""
    plt = _pyplot()
    fig, (dist, broker) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, values in lags.items():
        ordered = sorted(values)
        if not ordered:
            continue
        share = [(i + 1) / len(ordered) for i in range(len(ordered))]
        line = dist.step(ordered, share, where="post", label=name)[0]
        for key, mark in (("lag_p50_s", "o"), ("lag_p95_s", "s")):
            dist.scatter(
                out[name][key],
                0.5 if key == "lag_p50_s" else 0.95,
                marker=mark,
                color=line.get_color(),
                zorder=3,
            )
    dist.set(
        xscale="symlog",
        xlabel="lag: poll ran minus poll planned (s)",
        ylabel="share of polls",
        title="Lag per account (dots: printed p50, p95)",
    )
    dist.legend(fontsize=8)
    times = [i * every for i in range(len(queue))]
    broker.plot(times, queue, label="ready in the queue (LLEN)")
    broker.plot(times, unacked, label="held by the worker (unacked)")
    broker.set(
        xlabel="seconds into the run",
        ylabel="poll messages",
        title=f"Broker backlog ({out['seconds']:.0f} s, {out['requests']} requests)",
    )
    broker.legend(fontsize=8)
    return _save(fig, path)
