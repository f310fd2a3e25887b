"""Issue 12: used from a real application with its own ``tasks.py``, ``config/`` and queue.

Written from the README and the issue text only. The service's worker runs with the
application's directory as its working directory (so the application's ``tasks.py`` and
``config`` are first on its ``sys.path``), never from the repository root; the application
has its own worker (``celery -A tasks worker -Q appq``) that records every callback it runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness_issue12_13 import (
    APP_QUEUE,
    BIN,
    POLLER_QUEUE,
    Stack,
    base_env,
    export_ids,
    running_stack,
    wait_until,
)

pytestmark = pytest.mark.integration

CLI_QUEUE = "appq-cli"


@pytest.fixture(scope="module")
def app_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # POLLER_CALLBACK_QUEUE (the queue of a callback whose signature names none) is the app's
    # queue; --callback-queue is checked with another queue the app's worker also consumes.
    with running_stack(
        tmp_path_factory.mktemp("issue12"), extra_env={"POLLER_CALLBACK_QUEUE": APP_QUEUE}
    ) as stack:
        stack.start_worker(cwd=stack.app_dir)  # the service's worker, from the app's directory
        stack.start_beat()
        stack.start_app_worker(f"{APP_QUEUE},{CLI_QUEUE}")
        yield stack


def _only_callback(stack: Stack, tid: str) -> dict[str, Any]:
    """Wait for ``tid``'s callback, let a re-send show up if there is one, return the one."""
    stack.wait_callback(tid)
    stack.settle()
    got = stack.callbacks_for(tid)
    assert len(got) == 1, f"expected exactly one callback for {tid}, got {len(got)}: {got}"
    return got[0]


def _no_unregistered(stack: Stack) -> None:
    log = stack.procs["worker"].log()
    assert "unregistered task" not in log.lower(), stack.procs["worker"].tail()


def _tid_from(out: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    assert lines, "no output"
    return lines[-1].split()[-1]


# --------------------------------------------------------------------------------------------


def test_installs_one_import_package_and_no_clashing_top_level_names(tmp_path: Path) -> None:
    """`tasks`, `config` and `providers` must not be importable from an empty directory."""
    code = (
        "import importlib.util, json\n"
        "names = ['tasks', 'config', 'providers', 'export_poller', 'export_poller.providers']\n"
        "out = {}\n"
        "for n in names:\n"
        "    s = importlib.util.find_spec(n)\n"
        "    out[n] = s.origin if s else None\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(
        [str(BIN / "python"), "-c", code],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert found["export_poller"], found
    assert found["export_poller.providers"], found
    clashing = {n: found[n] for n in ("tasks", "config", "providers") if found[n]}
    assert not clashing, f"top-level modules installed beside export_poller: {clashing}"


TRACK_FROM_APP = """
    import json, sys

    import config
    import tasks  # the application's own tasks.py, which itself uses export_poller
    from export_poller import get_export, track_export

    tid = tasks.start_export(sys.argv[1], metadata={"order": 42})
    record = get_export(tid)
    print(json.dumps({
        "tid": tid,
        "tasks_file": tasks.__file__,
        "config_file": config.__file__,
        "config_owner": config.OWNER,
        "track_export_module": track_export.__module__,
        "state": record["state"],
    }))
"""


def test_track_export_from_an_application_reaches_its_queue_once(app_stack: Stack) -> None:
    stack = app_stack
    (eid,) = export_ids(1)
    stack.fake.add_job(eid, polls_before_done=2)

    r = stack.app_script(TRACK_FROM_APP, eid)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(out["tasks_file"]).resolve().parent == stack.app_dir.resolve(), out
    assert Path(out["config_file"]).resolve().parent.parent == stack.app_dir.resolve(), out
    assert out["config_owner"] == "myapp"
    assert out["track_export_module"].startswith("export_poller"), out
    assert out["state"] in ("pending", "running", "completed"), out
    tid = out["tid"]

    cb = _only_callback(stack, tid)
    assert cb["task"] == "myapp.export_ready", cb
    assert cb["routing_key"] == APP_QUEUE, cb
    record = cb["record"]
    assert record["state"] == "completed", record
    assert str(record["export_id"]) == eid
    assert record["metadata"] == {"order": 42}
    assert "download_url" in json.dumps(record["status"]), record["status"]
    assert stack.token not in json.dumps(cb), "the account's token leaked into the callback"
    assert stack.fake.polls_of(eid) >= 3  # queued, processing, completed
    _no_unregistered(stack)


def test_cli_track_with_callback_queue_delivers_to_that_queue(app_stack: Stack) -> None:
    stack = app_stack
    (eid,) = export_ids(1)
    stack.fake.add_job(eid, polls_before_done=1)

    r = stack.cli(
        "track",
        "cometly",
        eid,
        "--on-complete",
        "myapp.export_ready",
        "--on-failure",
        "myapp.export_failed",
        "--callback-queue",
        CLI_QUEUE,
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    tid = _tid_from(r.stdout)

    cb = _only_callback(stack, tid)
    assert cb["task"] == "myapp.export_ready", cb
    assert cb["routing_key"] == CLI_QUEUE, cb
    assert cb["record"]["state"] == "completed"
    _no_unregistered(stack)


def test_callback_queue_setting_routes_a_callback_that_names_no_queue(app_stack: Stack) -> None:
    """The README's own CLI example, with POLLER_CALLBACK_QUEUE set: the app's worker gets it."""
    stack = app_stack
    (eid,) = export_ids(1)
    stack.fake.add_job(eid, polls_before_done=1)

    r = stack.cli("track", "cometly", eid, "--on-complete", "myapp.export_ready")
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    tid = _tid_from(r.stdout)

    cb = _only_callback(stack, tid)
    assert cb["task"] == "myapp.export_ready", cb
    assert cb["routing_key"] == APP_QUEUE, cb
    _no_unregistered(stack)


# exports.track by name, from a process that never imports export_poller (a plain Celery client)
SEND_TRACK_BY_NAME = f"""
    import json, sys

    from celery import Celery
    from config.settings import BROKER_URL

    provider, export_id, chosen = sys.argv[1:4]
    client = Celery("someservice", broker=BROKER_URL)
    client.send_task(
        "exports.track",
        queue={POLLER_QUEUE!r},
        args=[provider, export_id],
        kwargs={{
            "tracking_id": chosen,
            "on_complete": {{"task": "myapp.export_ready", "options": {{"queue": {APP_QUEUE!r}}}}},
            "on_failure": {{"task": "myapp.export_failed", "options": {{"queue": {APP_QUEUE!r}}}}},
            "metadata": {{"corr": chosen}},
        }},
    )
    assert "export_poller" not in sys.modules
    print("sent")
"""


def _callbacks_about(stack: Stack, chosen: str) -> list[dict[str, Any]]:
    out = []
    for cb in stack.callbacks():
        rec = cb.get("record") or {}
        if rec.get("tracking_id") == chosen or (rec.get("metadata") or {}).get("corr") == chosen:
            out.append(cb)
    return out


def test_track_by_name_with_a_caller_chosen_tracking_id(app_stack: Stack) -> None:
    stack = app_stack
    (eid,) = export_ids(1)
    stack.fake.add_job(eid, polls_before_done=1)
    chosen = f"order-{uuid.uuid4().hex}"

    r = stack.app_script(SEND_TRACK_BY_NAME, "cometly", eid, chosen)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"

    wait_until(lambda: _callbacks_about(stack, chosen), 60, f"a callback for {chosen}", stack.diag)
    stack.settle()
    got = _callbacks_about(stack, chosen)
    assert len(got) == 1, got
    assert got[0]["task"] == "myapp.export_ready", got[0]
    assert got[0]["record"]["tracking_id"] == chosen, got[0]["record"]

    st = stack.cli("status", chosen, "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["tracking_id"] == chosen


def test_refused_track_by_name_fires_on_failure_with_the_error(app_stack: Stack) -> None:
    stack = app_stack
    chosen = f"order-{uuid.uuid4().hex}"

    r = stack.app_script(SEND_TRACK_BY_NAME, "comety", "123", chosen)  # a typo in the provider
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"

    wait_until(
        lambda: _callbacks_about(stack, chosen), 60, f"on_failure for refused {chosen}", stack.diag
    )
    stack.settle()
    got = _callbacks_about(stack, chosen)
    assert len(got) == 1, got
    cb = got[0]
    assert cb["task"] == "myapp.export_failed", cb
    assert cb["routing_key"] == APP_QUEUE, cb
    record = cb["record"]
    assert record.get("tracking_id") == chosen, record
    error = record.get("error")
    assert isinstance(error, dict), f"the record must carry the error: {record}"
    assert error.get("kind") and error.get("message"), error
    assert "comety" in error["message"], error
    assert stack.token not in json.dumps(cb), "a secret leaked into the refusal record"

    log = stack.procs["worker"].log()
    assert stack.token not in log, "a secret leaked into the worker log"
    warned = [ln for ln in log.splitlines() if "WARNING" in ln and ("comety" in ln or chosen in ln)]
    assert warned, "the refusal must be logged at WARNING\n" + stack.procs["worker"].tail()


def test_status_by_unique_prefix_and_json(app_stack: Stack) -> None:
    stack = app_stack
    (eid,) = export_ids(1)
    stack.fake.add_job(eid, polls_before_done=1)
    r = stack.cli("track", "cometly", eid)
    assert r.returncode == 0, r.stderr
    tid = _tid_from(r.stdout)
    prefix = tid[:12]  # the width `list` prints
    assert prefix != tid

    human = stack.cli("status", prefix)
    assert human.returncode == 0, f"status {prefix}: {human.stderr}"
    assert prefix in human.stdout

    as_json = stack.cli("status", prefix, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["tracking_id"] == tid

    listed = stack.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert tid in json.dumps(json.loads(listed.stdout))

    unknown = stack.cli("status", "zz-no-such-export")
    assert unknown.returncode == 2, (unknown.returncode, unknown.stdout, unknown.stderr)


def test_status_human_output_shows_iso_times_not_epoch_floats(app_stack: Stack) -> None:
    stack = app_stack
    (eid,) = export_ids(1)
    stack.fake.add_job(eid, polls_before_done=1)
    r = stack.cli("track", "cometly", eid)
    assert r.returncode == 0, r.stderr
    tid = _tid_from(r.stdout)
    human = stack.cli("status", tid)
    assert human.returncode == 0, human.stderr
    epoch = re.findall(r"\b1[6-9]\d{8}(?:\.\d+)?\b", human.stdout)
    assert not epoch, f"epoch times in human output: {epoch}\n{human.stdout}"
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", human.stdout), human.stdout
