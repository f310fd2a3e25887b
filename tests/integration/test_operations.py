"""What a team sees on day one: the CLI, the demo, Flower, metrics and the compose file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from export_poller.processes import free_port, spawn, stand_in, wait_until
from export_poller.providers.simulator.client import SimulatorClient
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export_poller.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and words in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_tracks_shows_lists_and_cancels(
    env: dict[str, str], sim_client: SimulatorClient
) -> None:
    export_id = str(sim_client.create_job("cgc", pending_polls=50))
    stand_in(env)  # no worker runs: the export stays pending
    tracked = cli(env, "track", "cgc", export_id, "--metadata", '{"team": "genomics"}')
    assert tracked.returncode == 0, tracked.stderr
    tid = tracked.stdout.strip()
    status = json.loads(cli(env, "status", tid, "--json").stdout)
    assert status["tracking_id"] == tid and status["state"] == "pending"
    assert status["metadata"] == {"team": "genomics"}
    listed = json.loads(cli(env, "list", "--provider", "cgc", "--json").stdout)
    assert [r["tracking_id"] for r in listed] == [tid]
    assert json.loads(cli(env, "list", "--state", "completed", "--json").stdout) == []
    table = cli(env, "list").stdout
    assert "tracking id" in table and tid[:12] in table
    assert cli(env, "cancel", tid).stdout.strip() == "cancelled"
    assert json.loads(cli(env, "status", tid, "--json").stdout)["state"] == "cancelled"
    assert cli(env, "cancel", tid).stdout.strip() == "already finished"


def test_cli_user_mistakes_are_one_line_and_exit_2(env: dict[str, str]) -> None:
    one_line_error(cli(env, "track", "cometlly", "1"), "did you mean 'cometly'")
    one_line_error(cli(env, "track", "cometly", "abc"), "export ids must match")
    one_line_error(cli(env, "status", "0123456789abcdef"), "unknown tracking id")
    one_line_error(cli(env, "track", "cgc", "x", "--metadata", "{nope"), "--metadata is not JSON")
    down = {**env, "POLLER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    one_line_error(cli(down, "list"), "Redis is unreachable")
    bad = {**env, "POLLER_BACKOFF_FACTOR": "0.5"}
    one_line_error(cli(bad, "list"), "POLLER_BACKOFF_FACTOR")


def test_the_demo_finishes_with_every_export_ended_and_leaves_nothing_behind(
    env: dict[str, str],
) -> None:
    clean = {k: v for k, v in env.items() if not k.startswith("POLLER_")}
    result = cli(clean, "demo", timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"25 exports ended: .*\"cancelled\": 1.*\"timed_out\": 1", result.stdout)
    assert "callbacks fired: 24" in result.stdout
    assert "callback on_complete chaossearch" in result.stdout
    logs = re.search(r"logs (\S+)", result.stdout)
    assert logs
    assert processes_in(Path(logs.group(1))) == []


def processes_in(workdir: Path) -> list[str]:
    """Processes whose command line or working directory is under `workdir` (Redis renames
    its own command line, so the working directory is what gives a private redis away)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(workdir)) or str(workdir) in args:
            found.append(f"{proc.name}: {args}")
    return found


def flower_tasks(port: int) -> dict[str, Any]:
    response = requests.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5)
    response.raise_for_status()
    tasks: dict[str, Any] = response.json()
    return tasks


def test_flower_shows_polls_by_name_with_no_secret(
    fleet: Fleet, sim_client: SimulatorClient, env: dict[str, str]
) -> None:
    from export_poller.api import track_export

    port = free_port()
    flower = spawn(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
        fleet.workdir,
    )
    fleet.children.append(flower)
    worker = fleet.worker()
    wait_until(lambda: _up(port), 60, "flower to answer")
    # Workers send no task events of their own accord: Flower turns them on (every 5 s).
    wait_until(lambda: "enabled by remote" in worker.output(), 30, "flower to turn on events")
    export_id = str(sim_client.create_job("biodatacatalyst", running_polls=2))
    tid = track_export("biodatacatalyst", export_id, timeout=60)
    wait_until(
        lambda: any(t.get("name") == "exports.poll" for t in flower_tasks(port).values()),
        60,
        "flower to see a poll",
    )
    polls = [t for t in flower_tasks(port).values() if t.get("name") == "exports.poll"]
    assert all(tid in t["args"] for t in polls)
    page = json.dumps(flower_tasks(port))
    for secret in (
        env["POLLER_ACCOUNTS__BIODATACATALYST__TOKEN"],
        env["POLLER_ACCOUNTS__CHAOSSEARCH__SECRET_KEY"],
    ):
        assert secret not in page


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).ok
    except requests.RequestException:
        return False


def test_metrics_endpoint_serves_domain_metrics(fleet: Fleet, env: dict[str, str]) -> None:
    from export_poller.api import track_export

    stand_in(env)  # no worker runs: the export stays pending
    track_export("cgc", "neverCreated0", timeout=60)
    port = free_port()
    server = spawn(
        "metrics",
        [sys.executable, "-m", "export_poller.cli", "metrics", "--port", str(port)],
        env,
        fleet.workdir,
    )
    fleet.children.append(server)
    wait_until(lambda: _metrics(port) is not None, 30, "the metrics endpoint")
    text = _metrics(port) or ""
    assert 'export_poller_active_exports{provider="cgc",state="pending"} 1.0' in text
    assert 'export_poller_breaker_open{account="cometly"} 0.0' in text
    assert "export_poller_callback_lag_seconds" in text


def _metrics(port: int) -> str | None:
    try:
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
    except requests.RequestException:
        return None
    return response.text if response.ok else None


def test_docker_compose_accepts_the_compose_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None and not os.environ.get("CI"):
        pytest.skip("docker-compose is not installed (CI installs Debian's package)")
    assert binary, "docker-compose is missing in CI"
    result = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    config = result.stdout
    for service in ("redis:", "worker:", "beat:", "flower:", "simulator:", "metrics:"):
        assert service in config
    assert "noeviction" in config and "appendonly" in config and "healthcheck" in config


def test_the_demo_cannot_collide_with_a_running_fleet(fleet: Fleet) -> None:
    """POLLER_REDIS_URL exported and a worker on it (the README's step 2): the demo keeps to
    its own Redis, or to its own queue and key prefix on the one it is given, and leaves no
    key behind."""
    fleet.worker()
    shared = fleet.env["POLLER_REDIS_URL"]
    before = set(fleet.r.keys("*")) - {"unacked_mutex"}
    private = cli(fleet.env, "demo", "--exports", "10", "--json", timeout=150)
    assert private.returncode == 0, private.stderr[-3000:]
    assert json.loads(private.stdout)["ok"] is True
    assert set(fleet.r.keys("*")) - {"unacked_mutex"} == before
    given = cli(fleet.env, "demo", "--exports", "10", "--redis-url", shared, timeout=150)
    assert given.returncode == 0, given.stdout[-3000:] + given.stderr[-3000:]
    assert "10 exports ended" in given.stdout and "queue export-poller-demo-" in given.stdout
    assert set(fleet.r.keys("*")) - {"unacked_mutex"} == before
    taken = fleet.children[0].output()  # the fleet took none of its tasks: no poll, no callback
    assert "] received" not in taken and "poll tracking_id=" not in taken, taken[-3000:]


def test_a_callback_redelivered_to_a_new_queue_arrives_there(
    fleet: Fleet, sim_client: SimulatorClient
) -> None:
    """`redeliver --queue` re-routes a callback: a worker of that queue runs it, and a typo of
    the queue's name is told with the queue the workers do consume."""
    from export_poller.processes import start_worker

    ours = fleet.worker()
    job = str(sim_client.create_job("cometly", running_polls=1))
    tracked = cli(fleet.env, "track", "cometly", job, "--on-complete", "exports.record_callback")
    assert tracked.returncode == 0, tracked.stderr
    tid = tracked.stdout.strip()
    fleet.wait_for_callbacks(1)
    elsewhere = start_worker({**fleet.env, "POLLER_QUEUE": "it-elsewhere"}, fleet.workdir,
                             name="elsewhere", concurrency=1)  # fmt: skip
    fleet.children.append(elsewhere)
    wait_until(lambda: "ready" in elsewhere.output(), 60, "the it-elsewhere worker to start")
    typo = cli(fleet.env, "redeliver", tid, "--queue", "it-elsewher")
    assert typo.returncode == 0, typo.stderr
    assert typo.stderr == (
        "warning: no worker on this broker consumes queue 'it-elsewher' yet: callbacks wait; "
        "did you mean 'it-elsewhere'?\n"
    )
    moved = cli(fleet.env, "redeliver", tid, "--queue", "it-elsewhere", "--json")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["redelivered_to"] == "it-elsewhere"
    assert json.loads(moved.stdout)["warnings"] == []

    def arrived() -> list[dict[str, Any]]:
        return [c for c in fleet.callbacks() if c["record"].get("redelivered_to") == "it-elsewhere"]

    wait_until(arrived, 60, "the callback redelivered to it-elsewhere")
    [callback] = arrived()
    assert callback["record"]["tracking_id"] == tid and callback["record"]["redeliveries"] == 2
    assert f"exports.record_callback[{callback['task_id']}] received" in elsewhere.output()
    assert callback["task_id"] not in ours.output()
