"""The CLI over a fake Redis and a fake broker: exit codes, `--json` shapes, human output."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from click.testing import CliRunner, Result

from export_poller import api, cli, jobs, operations, runtime
from export_poller.config.settings import AccountSettings, Settings
from export_poller.engine import Engine
from export_poller.providers.models import ExportStatus
from export_poller.store.fleet import Fleet
from tests.unit.conftest import Broker, Clock, ScriptedProvider, serve

SECRET = "t0k3n-very-secret"


def make_settings(**extra: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        accounts={
            "cometly": AccountSettings(provider="cometly", token=SECRET),
            "cgc": AccountSettings(provider="cgc", token="other-secret"),
        },
        **extra,
    )


@pytest.fixture
def settings_box(monkeypatch: pytest.MonkeyPatch) -> dict[str, Settings]:
    box = {"settings": make_settings()}
    monkeypatch.setattr(api, "get_settings", lambda: box["settings"])
    monkeypatch.setattr(operations, "get_settings", lambda: box["settings"])
    return box


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str] | None]:
    """The queues the workers consume, as the remote-control broadcast would tell (None: no
    worker answered)."""
    known: dict[str, set[str] | None] = {"queues": {"myapp", "export-poller"}}
    monkeypatch.setattr(api, "consumed_queues", lambda: known["queues"])
    return known


@pytest.fixture
def wired(
    monkeypatch: pytest.MonkeyPatch,
    engine: Engine,
    settings_box: dict[str, Settings],
    consumers: dict[str, set[str] | None],
) -> Engine:
    monkeypatch.setattr(api, "get_engine", lambda: engine)
    monkeypatch.setattr(runtime, "get_engine", lambda: engine)
    serve(engine, settings_box["settings"])
    return engine


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args))


def one_line_error(result: Result, words: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def finish(engine: Engine, broker: Broker, clock: Clock, tid: str) -> None:
    """Deliver polls until the export ends (the scripted provider decides how)."""
    for _ in range(20):
        for ptid, token, countdown in broker.take_polls():
            clock.advance(countdown)
            engine.poll(ptid, token, account=broker.account_of[ptid])
        record = engine.get(tid)
        if record and record["state"] not in ("pending", "running"):
            return
    raise AssertionError("the export did not end")


def test_track_routes_callbacks_to_the_given_queue_and_prints_json(wired: Engine) -> None:
    result = run(
        "track", "cometly", "4", "--on-complete", "myapp.ready", "--callback-queue", "myapp",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"tracking_id", "warnings"} and out["warnings"] == []
    fields = wired.store.get(out["tracking_id"])
    assert fields is not None
    sig = wired.store.get_signature(fields["on_complete"])
    assert sig == {"task": "myapp.ready", "options": {"queue": "myapp"}}


def test_a_callback_our_workers_would_discard_is_warned_about(wired: Engine) -> None:
    result = run("track", "cometly", "5", "--on-complete", "myapp.ready")
    assert result.exit_code == 0
    assert result.stderr.startswith("warning: callback 'myapp.ready' goes to this service's queue")
    tid = result.stdout.strip()
    assert "discard" in (api.get_export(tid) or {})["warning"]
    ours = run("track", "cometly", "6", "--on-complete", "exports.record_callback")
    assert ours.exit_code == 0 and ours.stderr == ""


def test_a_callback_queue_no_worker_consumes_is_warned_about_with_the_closest_one(
    wired: Engine, consumers: dict[str, set[str] | None]
) -> None:
    result = run(
        "track", "cometly", "30", "--on-complete", "myapp.ready", "--callback-queue", "mypp"
    )
    assert result.exit_code == 0 and result.stdout.strip() in list(wired.store.iter_ids())
    assert result.stderr == (
        "warning: no worker on this broker consumes queue 'mypp' yet: callbacks wait; "
        "did you mean 'myapp'?\n"
    )
    far = run("track", "cometly", "33", "--on-complete", "a.b", "--callback-queue", "zzz")
    assert (
        far.stderr == "warning: no worker on this broker consumes queue 'zzz' yet: callbacks wait\n"
    )
    consumers["queues"] = None
    silent = run(
        "track", "cometly", "31", "--on-complete", "a.b", "--callback-queue", "mypp", "--json"
    )
    assert json.loads(silent.stdout)["warnings"] == [
        "no worker answered on this broker: is one consuming queue 'mypp'?"
    ]
    quiet = run("track", "cometly", "32", "--on-complete", "a.b", "--callback-queue", "mypp",
                "--no-queue-check")  # fmt: skip
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_the_callback_queue_setting_routes_callbacks_that_name_none(
    wired: Engine, settings_box: dict[str, Settings]
) -> None:
    settings_box["settings"] = make_settings(callback_queue="myapp")
    result = run("track", "cometly", "7", "--on-failure", "myapp.failed", "--json")
    assert json.loads(result.stdout)["warnings"] == []
    fields = wired.store.get(json.loads(result.stdout)["tracking_id"]) or {}
    assert wired.store.get_signature(fields["on_failure"]) == {
        "task": "myapp.failed",
        "options": {"queue": "myapp"},
    }


def test_a_caller_chosen_tracking_id_is_idempotent_and_never_reused(wired: Engine) -> None:
    first = run("track", "cometly", "8", "--tracking-id", "order-0042")
    again = run("track", "cometly", "8", "--tracking-id", "order-0042")
    assert first.stdout.strip() == again.stdout.strip() == "order-0042"
    assert len(list(wired.store.iter_ids())) == 1
    one_line_error(run("track", "cometly", "9", "--tracking-id", "order-0042"), "already used")
    one_line_error(run("track", "cometly", "8", "--tracking-id", "order-0043"), "tracked as")
    one_line_error(run("track", "cometly", "9", "--tracking-id", "a b"), "tracking_id must be")
    one_line_error(run("track", "cometly", "9", "--callback-queue", "a b"), "not a queue name")


def test_ids_are_accepted_by_unique_prefix(wired: Engine) -> None:
    tid = run("track", "cometly", "10", "--tracking-id", "abc-000001").stdout.strip()
    run("track", "cometly", "11", "--tracking-id", "abc-000002")
    shown = run("status", "abc-000001"[:9] + "1", "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["tracking_id"] == tid
    assert json.loads(run("status", "abc-0000", "--json").stdout or "null") is None
    one_line_error(run("status", "abc-0000"), "ambiguous: abc-000001, abc-000002")
    one_line_error(run("status", "zzz"), "unknown tracking id")
    one_line_error(run("cancel", "../x"), "unknown tracking id")


def test_status_shows_iso_times_and_json_not_python_reprs(wired: Engine) -> None:
    tid = run("track", "cometly", "12", "--metadata", '{"team": "genomics"}').stdout.strip()
    text = run("status", tid[:12]).stdout
    assert "created_at: 2023-11-14T22:13:20Z" in text  # the fake clock's start
    assert 'metadata: {"team": "genomics"}' in text
    assert "{'" not in text and "1700000000" not in text


def test_list_filters_by_age_and_suggests_a_provider(wired: Engine, fake_clock: Clock) -> None:
    fake_clock.t = time.time() - 7200
    old = run("track", "cometly", "13").stdout.strip()
    fake_clock.t = time.time()
    run("track", "cometly", "14")
    listed = json.loads(run("list", "--older-than", "1h", "--json").stdout)
    assert [r["tracking_id"] for r in listed] == [old]
    assert len(json.loads(run("list", "--provider", "COMETLY", "--json").stdout)) == 2
    one_line_error(run("list", "--provider", "comety"), "did you mean 'cometly'")
    one_line_error(run("watch", "--once", "--provider", "cgcc"), "did you mean 'cgc'")
    one_line_error(run("list", "--older-than", "soon"), "--older-than 'soon'")


def test_stuck_lists_silent_exports_and_missing_accounts_with_reasons(
    wired: Engine, fake_clock: Clock, settings_box: dict[str, Settings]
) -> None:
    fake_clock.t = time.time() - 3 * 3600
    silent = run("track", "cometly", "15").stdout.strip()
    fake_clock.t = time.time()
    run("track", "cometly", "16")
    run("track", "cgc", "x1")
    # The worker serving cgc stops; one serving only cometly is left.
    Fleet(wired.store.r, wired.store.keys).leave("worker@test")
    only_cometly = Settings(
        _env_file=None,  # type: ignore[call-arg]
        accounts={"cometly": AccountSettings(provider="cometly", token=SECRET)},
    )
    serve(wired, only_cometly, "cometly-only@test")
    wired.roster.max_age = 0.0  # the CLI runs a fresh process: no roster read is cached
    stuck = json.loads(run("list", "--stuck", "--json").stdout)
    reasons = {r["account"]: r["stuck"] for r in stuck}
    assert [r["tracking_id"] for r in stuck if r["account"] == "cometly"] == [silent]
    assert any("no answer for" in why for why in reasons["cometly"])
    assert reasons["cgc"] == ["no live worker serves account 'cgc'"]
    text = run("list", "--stuck").stdout
    assert silent[:12] in text and "no answer for" in text


def test_redeliver_sends_the_callback_again_and_counts_it(
    wired: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("17", "completed")
    tid = run("track", "cometly", "17", "--on-complete", "exports.record_callback").stdout.strip()
    one_line_error(run("redeliver", tid), "still pending")
    finish(wired, broker, fake_clock, tid)
    assert len(broker.callbacks) == 1
    result = run("redeliver", tid[:8], "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["redeliveries"] == 1 and record["redelivered_at"] is not None
    assert len(broker.callbacks) == 2 and broker.callbacks[1][1]["redeliveries"] == 1
    assert "redelivery 2" in run("redeliver", tid).stdout


def test_redeliver_refuses_what_has_no_callback(
    wired: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("18", "completed")
    plain = run("track", "cometly", "18").stdout.strip()
    finish(wired, broker, fake_clock, plain)
    one_line_error(run("redeliver", plain), "has no on_complete callback")
    cancelled = run("track", "cometly", "19").stdout.strip()
    assert json.loads(run("cancel", cancelled, "--json").stdout) == {
        "tracking_id": cancelled,
        "cancelled": True,
        "state": "cancelled",
    }
    one_line_error(run("redeliver", cancelled), "cancelled")


def test_refresh_keeps_a_fresh_answer_without_firing_the_callback_unless_asked(
    wired: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("20", "completed")
    tid = run("track", "cometly", "20", "--on-complete", "exports.record_callback").stdout.strip()
    finish(wired, broker, fake_clock, tid)
    fresh = ExportStatus(state="completed", result={"download_url": "https://x.test/new"})
    provider.scripts["20"] = [fresh]
    record = json.loads(run("refresh", tid, "--json").stdout)
    assert record["status"]["result"] == {"download_url": "https://x.test/new"}
    assert record["refreshes"] == 1 and record["state"] == "completed"
    assert len(broker.callbacks) == 1
    again = run("refresh", tid, "--callback")
    assert again.exit_code == 0 and "callback sent again" in again.stdout
    assert len(broker.callbacks) == 2 and broker.callbacks[1][1]["refreshes"] == 2


def test_refresh_reports_a_provider_that_does_not_answer(
    wired: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    from export_poller.providers import errors

    provider.script("21", "completed")
    tid = run("track", "cometly", "21").stdout.strip()
    finish(wired, broker, fake_clock, tid)
    provider.scripts["21"] = [errors.ServerError("503 from cometly", status_code=503)]
    one_line_error(run("refresh", tid), "did not answer (server_error)", code=1)


def test_watch_once_prints_json(wired: Engine) -> None:
    tid = run("track", "cometly", "22").stdout.strip()
    lines = run("watch", "--once", "--json").stdout.splitlines()
    assert len(lines) == 1 and [r["tracking_id"] for r in json.loads(lines[0])] == [tid]


def test_simulate_help_is_the_simulators_own() -> None:
    result = run("simulate", "--help")
    assert result.exit_code == 0
    assert "usage: export-poller simulate" in result.stdout and "--cometly-limit" in result.stdout


def test_a_refused_track_by_name_tells_the_caller_without_secrets(
    settings_box: dict[str, Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[tuple[dict[str, Any], tuple[Any, ...]]] = []

    class FakeSignature:
        def __init__(self, sig: dict[str, Any], app: Any) -> None:
            self.sig = sig

        def apply_async(self, args: tuple[Any, ...], **options: Any) -> None:
            sent.append((self.sig, args))

    monkeypatch.setattr(jobs, "signature", FakeSignature)
    failure = {"task": "myapp.export_failed", "options": {"queue": "myapp"}}
    with caplog.at_level(logging.WARNING, logger="export_poller.tasks"):
        result = jobs.track.run(
            "comety", "4", on_failure=failure, tracking_id="order-0042", metadata={"a": 1}
        )
    assert result is None
    (sig, (record,)), *more = sent
    assert not more and sig["task"] == "myapp.export_failed" and sig["options"]["queue"] == "myapp"
    assert record["state"] == "refused" and record["tracking_id"] == "order-0042"
    assert record["error"]["kind"] == "unknown_provider"
    assert "did you mean 'cometly'" in record["error"]["message"]
    assert record["metadata"] == {"a": 1} and record["export_id"] == "4"
    assert any(
        r.levelno == logging.WARNING and "track refused" in r.message for r in caplog.records
    )


def test_refusal_messages_are_redacted(settings_box: dict[str, Settings]) -> None:
    exc = ValueError(f"bad {SECRET} at redis://user:hunter2@db:6379/0")
    record = api.refusal_record(exc, {"provider": "cometly", "export_id": SECRET})
    text = json.dumps(record)
    assert SECRET not in text and "hunter2" not in text
    assert record["error"] == {
        "kind": "value_error",
        "message": "bad *** at redis://user:***@db:6379/0",
    }


def test_the_simulator_banner_lists_urls_logins_and_control_routes() -> None:
    from export_poller.providers.simulator.cli import banner, banner_data
    from export_poller.providers.simulator.options import SimulatorOptions

    text = banner("http://127.0.0.1:8900", SimulatorOptions())
    assert text.splitlines()[0].endswith("http://127.0.0.1:8900")
    expected = ["/public-api/v1/events/exports/{id}", "sim-token", "sim:sim-password"]
    expected += ["SIMACCESSKEY:sim-secret-key", "POST /_sim/jobs", "GET  /_sim/stats"]
    for words in expected:
        assert words in text
    data = banner_data("http://127.0.0.1:8900", SimulatorOptions())
    assert json.loads(json.dumps(data))["logins"]["tokens"] == ["sim-token"]
    assert {c["route"] for c in data["control"]} >= {"POST /_sim/reset", "GET /_sim/health"}


def test_the_demo_ignores_a_fleets_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_poller.demo import Private, private_env

    monkeypatch.setenv("POLLER_REDIS_URL", "redis://fleet:6379/0")
    monkeypatch.setenv("POLLER_BROKER_URL", "redis://fleet:6379/1")
    monkeypatch.setenv("POLLER_CALLBACK_QUEUE", "fleet-callbacks")
    names = Private()
    env = private_env("redis://127.0.0.1:7000/0", "http://127.0.0.1:8900", names)
    assert env["POLLER_REDIS_URL"] == env["POLLER_BROKER_URL"] == "redis://127.0.0.1:7000/0"
    assert "POLLER_CALLBACK_QUEUE" not in env
    assert env["POLLER_QUEUE"] == names.queue != Private().queue
    assert env["POLLER_KEY_PREFIX"] == names.prefix and names.prefix != "ep"


def test_a_track_by_name_with_unknown_or_missing_arguments_is_a_refusal_too(
    settings_box: dict[str, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[dict[str, Any]] = []

    class FakeSignature:
        def __init__(self, sig: dict[str, Any], app: Any) -> None:
            pass

        def apply_async(self, args: tuple[Any, ...], **options: Any) -> None:
            sent.append(args[0])

    monkeypatch.setattr(jobs, "signature", FakeSignature)
    failure = {"task": "myapp.export_failed", "options": {"queue": "myapp"}}
    jobs.track.run("cometly", "4", on_failure=failure, correlation_id="x")
    jobs.track.run(on_failure=failure)
    assert [r["error"]["kind"] for r in sent] == ["configuration_error", "unknown_provider"]
    assert sent[0]["error"]["message"] == "exports.track has no argument correlation_id"


def test_status_and_list_show_the_accounts_lag_and_the_fleets_backlog(
    wired: Engine, fake_clock: Clock
) -> None:
    tid = run("track", "cometly", "21").stdout.strip()
    run("track", "cometly", "22")
    fake_clock.advance(40)  # two first polls sent, never run: the sweep sees them late
    wired.sweep()
    record = json.loads(run("status", tid, "--json").stdout)
    assert record["account_lag"] == pytest.approx(40.0)
    backlog = record["fleet_backlog"]
    assert backlog["bound"] == 10_000 and backlog["lag"] == {"cometly": pytest.approx(40.0)}
    assert backlog["in_broker"] == backlog["ready"] == 2  # the sweep's two rescue messages
    text = run("list").stdout
    assert "backlog: 2 poll messages ready in the broker (bound 10000)" in text
    assert "lag: cometly 40.0s" in text
