"""`redeliver --queue` and `redeliver_callback(tid, queue=...)`: a misrouted callback is sent
where it is run; redelivering one whose record warns of its routing says how; a queue no
worker consumes is named with the closest one they do."""

from __future__ import annotations

import json
import logging

import pytest

from export_poller import api
from export_poller.engine import Engine
from export_poller.providers.errors import ConfigurationError
from tests.unit import test_cli
from tests.unit.conftest import Broker, Clock, ScriptedProvider
from tests.unit.test_cli import finish, one_line_error, run

# The CLI tests' fixtures: a fake Redis and broker wired in, and the queues workers consume.
settings_box, consumers, wired = test_cli.settings_box, test_cli.consumers, test_cli.wired


def finished(engine: Engine, broker: Broker, clock: Clock, export_id: str, *args: str) -> str:
    """An export tracked from the CLI (`args`: its callback options) that has completed."""
    tracked = run("track", "cometly", export_id, "--on-complete", "myapp.ready", *args)
    tid = tracked.stdout.strip()
    finish(engine, broker, clock, tid)
    return tid


def test_redeliver_to_a_queue_sends_it_there_whatever_its_own_routing_said(
    wired: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("40", "completed")
    routing = {"exchange": "old", "routing_key": "old.key", "priority": 3}
    tid = api.track_export("cometly", "40", on_complete={"task": "myapp.ready", "options": routing})
    finish(wired, broker, fake_clock, tid)
    result = run("redeliver", tid[:10], "--queue", "myapp", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["redelivered_to"] == "myapp" and out["warnings"] == []
    sig, record = broker.callbacks[-1]
    assert sig["task"] == "myapp.ready" and sig["options"] == {"queue": "myapp", "priority": 3}
    assert record["redelivered_to"] == "myapp" and record["redeliveries"] == 1
    assert (api.get_export(tid) or {})["redelivered_to"] == "myapp"
    again = run("redeliver", tid, "--queue", "myapp")
    assert again.stderr == ""
    assert again.stdout == (
        f"callback sent again to queue 'myapp' for {tid} (state completed, redelivery 2)\n"
    )
    by_api = api.redeliver_callback(tid, queue="myapp.other")
    assert by_api["redelivered_to"] == "myapp.other" and "warnings" not in by_api
    assert broker.callbacks[-1][0]["options"]["queue"] == "myapp.other"


def test_redelivering_a_callback_the_record_warns_about_says_how_to_reroute_it(
    wired: Engine,
    broker: Broker,
    provider: ScriptedProvider,
    fake_clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.script("41", "completed")
    tid = finished(wired, broker, fake_clock, "41")  # no queue: ours, whose workers discard it
    assert "discard" in (api.get_export(tid) or {})["warning"]
    with caplog.at_level(logging.WARNING, logger="export_poller.api"):
        result = run("redeliver", tid)
    said = (
        "callback 'myapp.ready' goes to queue 'export-poller' again, the queue the record's "
        f"warning is about; re-route it with `export-poller redeliver {tid} --queue YOUR_QUEUE` "
        "(API: redeliver_callback(tracking_id, queue=...))"
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: {said}\n"
    assert said in caplog.text
    assert len(broker.callbacks) == 2  # sent all the same, as asked
    assert json.loads(run("redeliver", tid, "--json").stdout)["warnings"] == [said]
    rerouted = run("redeliver", tid, "--queue", "myapp")
    assert rerouted.exit_code == 0 and rerouted.stderr == ""
    assert broker.callbacks[-1][0]["options"] == {"queue": "myapp"}


def test_redeliver_to_a_queue_no_worker_consumes_names_the_closest_one_they_do(
    wired: Engine,
    broker: Broker,
    provider: ScriptedProvider,
    fake_clock: Clock,
    consumers: dict[str, set[str] | None],
) -> None:
    provider.script("42", "completed")
    tid = finished(wired, broker, fake_clock, "42", "--callback-queue", "myapp")
    result = run("redeliver", tid, "--queue", "mypp")
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        "warning: no worker on this broker consumes queue 'mypp' yet: callbacks wait; "
        "did you mean 'myapp'?\n"
    )
    assert broker.callbacks[-1][0]["options"] == {"queue": "mypp"}
    quiet = run("redeliver", tid, "--queue", "mypp", "--no-queue-check")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    consumers["queues"] = None
    unanswered = json.loads(run("redeliver", tid, "--queue", "mypp", "--json").stdout)
    assert unanswered["warnings"] == [
        "no worker answered on this broker: is one consuming queue 'mypp'?"
    ]


@pytest.mark.parametrize("queue", ["my app", "myapp\n", "q" * 201, "", "café"])
def test_a_queue_that_is_no_queue_name_is_refused_before_anything_is_sent(
    wired: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock, queue: str
) -> None:
    provider.script("43", "completed")
    tid = finished(wired, broker, fake_clock, "43", "--callback-queue", "myapp")
    one_line_error(run("redeliver", tid, "--queue", queue), "is not a queue name")
    with pytest.raises(ConfigurationError, match="is not a queue name"):
        api.redeliver_callback(tid, queue=queue)
    assert len(broker.callbacks) == 1
    assert "redeliveries" not in (api.get_export(tid) or {})


def test_track_refuses_a_callback_queue_with_a_trailing_newline(wired: Engine) -> None:
    """`$` matches before a final newline: the check must take the whole name."""
    refused = run("track", "cometly", "44", "--on-complete", "a.b", "--callback-queue", "myapp\n")
    one_line_error(refused, "is not a queue name")
    assert list(wired.store.iter_ids()) == []
