"""Issue 13: RabbitMQ as the broker (Redis stays the store), crash-safe; `export-poller health`.

Written from the README and the issue text only. The broker is the RabbitMQ this machine runs on
127.0.0.1:5672 (guest/guest), in a private vhost created for the test (``rabbitmqctl
add_vhost``; the default vhost ``/`` if that is not possible). The store is a private
``redis-server``. Callbacks go to the application's own queue on the same broker and are run by
the application's worker, which is never killed: what is counted is what the service sent.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .harness_issue12_13 import Stack, export_ids, free_port, running_stack, wait_until

pytestmark = pytest.mark.integration

N_EXPORTS = 50
KILLS = 3
# From an export's terminal transition (its record's `finished_at`) to its callback running: the
# issue's bound is one sweep interval plus the rescue grace (1 s + 5 s here); the slack covers a
# worker restart on a loaded machine. A callback parked in a dead worker's hands would take the
# broker's redelivery time (an hour on Redis by default) instead.
MAX_CALLBACK_DELAY = 30.0

TRACK_MANY = """
    import json, sys

    import tasks  # the application's tasks.py: callbacks to its own queue

    print(json.dumps([tasks.start_export(eid) for eid in sys.argv[1:]]))
"""


def _rabbit_listening() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
    except OSError:
        return False
    return True


def _ctl(*args: str) -> subprocess.CompletedProcess[str] | None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return None
    return subprocess.run([ctl, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def rabbit_url() -> Iterator[str]:
    """``amqp://`` URL of a private vhost (deleted afterwards), or of ``/`` as a fallback."""
    if not _rabbit_listening():
        pytest.skip("RabbitMQ is not listening on 127.0.0.1:5672")
    vhost = f"indep-{uuid.uuid4().hex[:10]}"
    made = _ctl("add_vhost", vhost)
    if made is None or made.returncode != 0:
        yield "amqp://guest:guest@127.0.0.1:5672//"
        return
    try:
        perm = _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        assert perm is not None and perm.returncode == 0, perm
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        _ctl("delete_vhost", vhost)


def _records(stack: Stack, tids: list[str]) -> dict[str, dict[str, Any]]:
    """Final records by tracking id, read through the CLI (`list --json`, else `status --json`)."""
    found: dict[str, dict[str, Any]] = {}
    listed = stack.cli("list", "--json")
    if listed.returncode == 0:
        data = json.loads(listed.stdout)
        rows = (
            data
            if isinstance(data, list)
            else next((v for v in data.values() if isinstance(v, list)), [])
        )
        found = {r["tracking_id"]: r for r in rows if isinstance(r, dict) and "tracking_id" in r}
    for tid in tids:
        if tid not in found:
            st = stack.cli("status", tid, "--json")
            assert st.returncode == 0, (tid, st.stderr)
            found[tid] = json.loads(st.stdout)
    return found


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return float(value)
    return None


def _late_callbacks(stack: Stack) -> dict[str, float]:
    late = {}
    for cb in stack.callbacks():
        finished = _epoch(cb["record"].get("finished_at"))
        if finished is not None and cb["at"] - finished > MAX_CALLBACK_DELAY:
            late[cb["record"]["tracking_id"]] = round(cb["at"] - finished, 1)
    return late


def _all_called_back(stack: Stack, tids: list[str]) -> bool:
    return set(tids) <= set(stack.callback_counts())


def _crash_worker_mid_poll(stack: Stack, tids: list[str]) -> int:
    """SIGKILL the service's worker while a provider request is in flight, restart it; repeat.

    The beat is SIGKILLed and restarted too, once, half-way. Returns the number of worker kills.
    """
    kills = 0
    for k in range(KILLS):
        seen = stack.fake.total()
        wait_until(
            lambda seen=seen: (
                _all_called_back(stack, tids)
                or (stack.fake.total() >= seen + 15 and stack.fake.in_flight() > 0)
            ),
            90,
            "the worker to be mid-poll",
            stack.diag,
            interval=0.01,
        )
        if _all_called_back(stack, tids):
            break
        worker = stack.procs["worker"]
        worker.send(signal.SIGKILL)
        worker.popen.wait(timeout=30)
        kills += 1
        if k == 1:
            stack.procs["beat"].send(signal.SIGKILL)
            stack.procs["beat"].popen.wait(timeout=30)
            stack.start_beat()
        stack.start_worker()
    return kills


@pytest.mark.timeout(300)
def test_rabbitmq_broker_crash_soak_no_callback_lost_or_doubled(
    tmp_path: Path, rabbit_url: str
) -> None:
    with running_stack(tmp_path, broker_url=rabbit_url, fake_delay=0.15) as stack:
        stack.start_worker()
        stack.start_beat()
        stack.start_app_worker()

        rng = random.Random(13)
        ids = export_ids(N_EXPORTS)
        for eid in ids:
            stack.fake.add_job(eid, polls_before_done=rng.randint(3, 6))
        r = stack.app_script(TRACK_MANY, *ids)
        assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        tids = json.loads(r.stdout.strip().splitlines()[-1])
        assert len(set(tids)) == N_EXPORTS

        kills = _crash_worker_mid_poll(stack, tids)
        assert kills >= 2, f"only {kills} kills happened mid-run; the soak proved little"

        wait_until(
            lambda: _all_called_back(stack, tids), 150, "every export's callback", stack.diag, 0.5
        )
        stack.settle()
        counts = stack.callback_counts()
        lost = [t for t in tids if counts[t] == 0]
        doubled = {t: c for t, c in counts.items() if c > 1}
        strangers = set(counts) - set(tids)
        assert not lost, f"{len(lost)} callbacks lost: {lost}"
        assert not doubled, f"callbacks fired more than once: {doubled}"
        assert not strangers, strangers
        assert {c["task"] for c in stack.callbacks()} == {"myapp.export_ready"}
        late = _late_callbacks(stack)
        assert not late, f"callbacks later than {MAX_CALLBACK_DELAY} s after the end: {late}"

        records = _records(stack, tids)
        states = {t: records[t]["state"] for t in tids}
        wrong = {t: s for t, s in states.items() if s != "completed"}
        assert not wrong, wrong


def _require_health_command(stack: Stack) -> None:
    """A missing command also exits non-zero: make sure the failures below are health's own."""
    r = stack.cli("health", "--help", timeout=60)
    assert r.returncode == 0, f"no `export-poller health` command:\n{r.stdout}{r.stderr}"


def _health(stack: Stack, **env: str) -> subprocess.CompletedProcess[str]:
    try:
        return stack.cli("health", env=stack.env(**env), timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`export-poller health` did not answer within 60 s ({env})") from exc


def test_health_ok_with_everything_up_and_failing_without_redis(
    tmp_path: Path, rabbit_url: str
) -> None:
    with running_stack(tmp_path, broker_url=rabbit_url) as stack:
        stack.start_worker()
        stack.start_beat()
        _require_health_command(stack)

        ok = _health(stack)
        assert ok.returncode == 0, f"stdout:\n{ok.stdout}\nstderr:\n{ok.stderr}"

        down = _health(stack, POLLER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        assert down.returncode != 0, f"health passed with Redis unreachable:\n{down.stdout}"


def test_health_fails_when_the_broker_is_unreachable_or_an_account_is_invalid(
    tmp_path: Path, rabbit_url: str
) -> None:
    with running_stack(tmp_path, broker_url=rabbit_url) as stack:
        _require_health_command(stack)
        dead = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
        down = _health(stack, POLLER_BROKER_URL=dead)
        assert down.returncode != 0, f"health passed with the broker unreachable:\n{down.stdout}"

        bad = _health(stack, POLLER_ACCOUNTS__BROKEN__PROVIDER="comety")
        assert bad.returncode != 0, f"health passed with an invalid account:\n{bad.stdout}"
