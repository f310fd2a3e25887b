"""Used from a real application: its own `tasks.py`, `config/` package and queue; callbacks and
refusals reach that queue; a finished export is refreshed and its callback sent again."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from export_poller.processes import Child, spawn, stand_in
from export_poller.providers.simulator.client import SimulatorClient
from tests.integration.conftest import Fleet, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

APP_TASKS = '''
"""An application's own tasks module: the name every Celery project uses."""
import json
import os

import redis
from celery import Celery

import config

app = Celery("myapp", broker=os.environ["APP_BROKER"])
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)
store = redis.Redis.from_url(os.environ["APP_STORE"])


@app.task(name="myapp.export_ready")
def export_ready(record):
    store.rpush(config.INBOX, json.dumps({"label": "ready", "record": record}))


@app.task(name="myapp.export_failed")
def export_failed(record):
    store.rpush(config.INBOX, json.dumps({"label": "failed", "record": record}))
'''

APP_CONFIG = 'QUEUE = "myapp"\nINBOX = "myapp:inbox"\n'

APP_SCRIPT = """
import json, os, sys
import config, tasks  # the application's own modules, found first on sys.path
from celery import signature
from export_poller import track_export

assert tasks.__file__.startswith(os.getcwd()) and config.__file__.startswith(os.getcwd())
ready = signature("myapp.export_ready", queue=config.QUEUE)
tid = track_export("cometly", sys.argv[1], on_complete=ready)
by_name = {"on_complete": {"task": "myapp.export_ready", "options": {"queue": config.QUEUE}}}
tasks.app.send_task(
    "exports.track", queue="export-poller", args=["cometly", sys.argv[2]],
    kwargs={"tracking_id": "order-0042", **by_name},
)
tasks.app.send_task(
    "exports.track", queue="export-poller", args=["comety", "9"],
    kwargs={"tracking_id": "order-0043", "metadata": {"order": 43},
            "on_failure": {"task": "myapp.export_failed", "options": {"queue": config.QUEUE}}},
)
try:  # an account the workers do not serve: refused here, at once, by name
    track_export("cometly", "77", account="acme", on_complete=ready)
    refused = ""
except ValueError as exc:
    refused = str(exc)
print(json.dumps({"tid": tid, "refused": refused}))
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "__init__.py").write_text(APP_CONFIG)
    (tmp_path / "tasks.py").write_text(textwrap.dedent(APP_TASKS))
    (tmp_path / "track.py").write_text(textwrap.dedent(APP_SCRIPT))
    return tmp_path


def run_in(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def start_app_worker(fleet: Fleet, env: dict[str, str], app_dir: Path) -> Child:
    """The application's own worker on its own queue, started in its directory."""
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "myapp"]
    argv += ["--pool", "solo", "--hostname", "myapp@%h", "--loglevel", "INFO"]
    argv += ["--without-gossip", "--without-mingle"]
    child = spawn("myapp-worker", argv, env, app_dir)
    fleet.children.append(child)
    wait_for(lambda: "ready" in child.output(), 60, "the application's worker to start")
    return child


FLEET_SETTINGS = ("POLLER_REDIS_URL", "POLLER_BROKER_URL", "POLLER_KEY_PREFIX", "POLLER_QUEUE")


def application_env(fleet: Fleet) -> dict[str, str]:
    """An application process's environment: where the fleet is, and nothing else of ours (no
    account, no credential); its own Celery app uses the fleet's broker."""
    env = {k: v for k, v in fleet.env.items() if not k.startswith("POLLER_")}
    env |= {k: fleet.env[k] for k in FLEET_SETTINGS if k in fleet.env}
    env.setdefault("POLLER_QUEUE", "export-poller")
    broker = fleet.env.get("POLLER_BROKER_URL") or fleet.env["POLLER_REDIS_URL"]  # either broker
    return env | {"APP_BROKER": broker, "APP_STORE": fleet.env["POLLER_REDIS_URL"]}


def inbox(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange("myapp:inbox", 0, -1)]  # type: ignore[union-attr]


def test_an_application_with_its_own_tasks_and_config_gets_its_callbacks(
    fleet: Fleet,
    sim_client: SimulatorClient,
    app_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = application_env(fleet)
    assert not [k for k in env if k.startswith("POLLER_ACCOUNTS")]
    monkeypatch.chdir(app_dir)  # both workers start in the application's directory
    fleet.worker()
    app_worker = start_app_worker(fleet, env, app_dir)
    ids = [str(sim_client.create_job("cometly", pending_polls=1, running_polls=1)) for _ in "abc"]
    script = run_in(app_dir, env, "track.py", ids[0], ids[1])
    assert script.returncode == 0, script.stderr
    tid, refused = json.loads(script.stdout)["tid"], json.loads(script.stdout)["refused"]
    assert refused.startswith("unknown account 'acme': no live worker serves it (the live ")
    assert "cometly (cometly)" in refused and "POLLER_ACCOUNTS__ACME__PROVIDER=" in refused
    cli = run_in(
        app_dir, env, "-m", "export_poller.cli", "track", "cometly", ids[2],
        "--on-complete", "myapp.export_ready", "--callback-queue", "myapp",
    )  # fmt: skip
    assert cli.returncode == 0 and cli.stderr == "", cli.stderr
    wait_for(lambda: len(inbox(fleet.r)) >= 4, 90, "four callbacks in the application's queue")
    got = {e["record"]["tracking_id"]: e for e in inbox(fleet.r)}
    assert set(got) == {tid, "order-0042", "order-0043", cli.stdout.strip()}
    for ok in (tid, "order-0042", cli.stdout.strip()):
        assert got[ok]["label"] == "ready" and got[ok]["record"]["state"] == "completed"
    refused = got["order-0043"]
    assert refused["label"] == "failed" and refused["record"]["state"] == "refused"
    assert refused["record"]["error"]["kind"] == "unknown_provider"
    assert "did you mean 'cometly'" in refused["record"]["error"]["message"]
    assert refused["record"]["metadata"] == {"order": 43}
    worker_log = fleet.children[0].output()
    assert "WARNING" in worker_log and "track refused tracking_id=order-0043" in worker_log
    assert "unregistered task" not in app_worker.output() + worker_log
    listed = run_in(app_dir, env, "-m", "export_poller.cli", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "acme" not in {r["account"] for r in json.loads(listed.stdout)}  # nothing pending


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_in(ROOT, env, "-m", "export_poller.cli", *args)


def test_a_finished_export_is_refreshed_and_its_callback_sent_again(
    fleet: Fleet, sim_client: SimulatorClient
) -> None:
    fleet.worker()
    job = str(sim_client.create_job("cometly", pending_polls=1, running_polls=1))
    tracked = cli(fleet.env, "track", "cometly", job, "--on-complete", "exports.record_callback")
    tid = tracked.stdout.strip()
    first = fleet.wait_for_callbacks(1)[0]["record"]
    assert first["tracking_id"] == tid and first["status"]["result"]["download_url"]
    listed = cli(fleet.env, "list", "--provider", "cometly").stdout
    assert tid[:12] in listed and "Z" in listed.splitlines()[1]
    refreshed = cli(fleet.env, "refresh", tid[:12], "--json")
    assert refreshed.returncode == 0, refreshed.stderr
    record = json.loads(refreshed.stdout)
    assert record["refreshes"] == 1 and record["status"]["result"]["download_url"]
    assert record["refreshed_at"] > first["finished_at"]
    redelivered = cli(fleet.env, "redeliver", tid, "--json")
    assert redelivered.returncode == 0 and json.loads(redelivered.stdout)["redeliveries"] == 1
    callbacks = fleet.wait_for_callbacks(2)
    assert [c["record"]["redeliveries"] for c in callbacks[1:]] == [1]
    assert len(fleet.callbacks()) == 2
    assert json.loads(cli(fleet.env, "list", "--stuck", "--json").stdout) == []


def test_stuck_shows_an_export_no_worker_polls(fleet: Fleet, sim_client: SimulatorClient) -> None:
    job = str(sim_client.create_job("cgc", pending_polls=5))
    stand_in(fleet.env)  # in the roster, but no worker polls: killed, say, within its expiry
    tracked = cli(fleet.env, "track", "cgc", job, "--on-failure", "a.b", "--callback-queue", "ab")
    no_worker = "warning: no worker answered on this broker: is one consuming queue 'ab'?\n"
    assert tracked.returncode == 0 and tracked.stderr == no_worker
    tid = tracked.stdout.strip()

    def stuck(periods: str = "1") -> list[dict[str, Any]]:
        found = cli(fleet.env, "list", "--stuck", "--periods", periods, "--json").stdout
        return cast(list[dict[str, Any]], json.loads(found))

    assert stuck("100") == []  # 100 waits of POLLER_BACKOFF_MAX (3 s here): not yet
    wait_for(stuck, 60, "the export no worker polls to show as stuck")
    (record,) = stuck()
    assert record["tracking_id"] == tid and record["stuck"][0].startswith("no answer for")
    assert record["state"] == "pending"


def roster(env: dict[str, str]) -> dict[str, Any]:
    listed = cli(env, "accounts", "--json")
    data = cast(dict[str, Any], json.loads(listed.stdout))
    assert listed.returncode == (0 if data["workers"] else 1), listed.stderr  # 1: none is live
    return data


def test_the_roster_follows_workers_and_track_refuses_when_none_is_live(fleet: Fleet) -> None:
    """A worker that stops drops out at once; one killed with SIGKILL, after its heartbeat
    expires (3 x POLLER_HEARTBEAT_INTERVAL, 1 s here); then track is refused by name."""
    env = application_env(fleet)
    victim, leaver = fleet.worker("victim"), fleet.worker("leaver")
    live = roster(env)
    names = sorted(w["name"] for w in live["workers"])
    assert [n.split("@")[0] for n in names] == ["leaver", "victim"]
    row = next(r for r in live["accounts"] if r["account"] == "cgc")
    assert row["provider"] == "cgc" and row["workers"] == names
    leaver.stop()
    assert [w["name"].split("@")[0] for w in roster(env)["workers"]] == ["victim"]
    victim.kill()  # SIGKILL: no goodbye
    wait_for(lambda: roster(env)["workers"] == [], 15, "the killed worker to drop out")
    refused = cli(env, "track", "cgc", "x1")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: account 'cgc' cannot be tracked: no live worker on ")
    assert "start a worker with POLLER_ACCOUNTS__CGC__PROVIDER=cgc" in refused.stderr
