"""A finished record's `error` says what ended the export, in one shape whatever ended it (a
provider-reported failure, a confirmed refusal, the deadline at a poll or at the sweep), and is
None on completion and cancellation, whatever the polls met on the way."""

from __future__ import annotations

from typing import Any

import pytest

from export_poller.engine import Engine
from export_poller.providers import errors
from export_poller.providers.models import ExportStatus, StatusError
from tests.unit.conftest import Broker, Clock, ScriptedProvider
from tests.unit.test_engine import run_to_end, track

SHAPE = {"kind", "message", "status_code"}


def ended(engine: Engine, broker: Broker, clock: Clock, tid: str) -> dict[str, Any]:
    """The record the failure callback was called with, which is also what `get_export` says."""
    run_to_end(engine, broker, clock)
    [(_, record)] = broker.callbacks
    assert record["tracking_id"] == tid and record["error"] == (engine.get(tid) or {})["error"]
    assert set(record["error"]) == SHAPE, record["error"]
    return record


def test_a_failure_the_provider_reports_is_the_records_error(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    said = StatusError(code="9107", message="Task failed: out of memory")
    provider.script("e1", "running", ExportStatus(state="failed", error=said))
    record = ended(engine, broker, fake_clock, track(engine))
    assert record["state"] == "failed"
    assert record["error"] == {
        "kind": "provider_failed",
        "message": "the provider reports the export failed: Task failed: out of memory",
        "status_code": None,
    }
    assert record["status"]["error"] == {"code": "9107", "message": "Task failed: out of memory"}


def test_a_failure_the_provider_gives_no_reason_for_still_has_an_error(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", "failed")
    record = ended(engine, broker, fake_clock, track(engine))
    assert record["error"]["kind"] == "provider_failed"
    assert record["error"]["message"] == "the provider reports the export failed"


def test_a_confirmed_refusal_and_a_reported_failure_have_errors_of_one_shape(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    provider.script("e1", errors.NotFound("no such export", status_code=404))
    provider.script("e2", "failed")
    refused, failed = track(engine, "e1"), track(engine, "e2")
    run_to_end(engine, broker, fake_clock)
    records = {r["tracking_id"]: r for _, r in broker.callbacks}
    assert {records[refused]["state"], records[failed]["state"]} == {"failed"}
    assert records[refused]["error"] == {
        "kind": "not_found",
        "message": "no such export",
        "status_code": 404,
    }
    assert set(records[failed]["error"] or {}) == set(records[refused]["error"]) == SHAPE


@pytest.mark.parametrize(
    ("answer", "message", "status_code"),
    [
        ("running", "no terminal answer before the deadline", None),
        (
            errors.ServerError("HTTP 503 from the provider", status_code=503),
            "no terminal answer before the deadline; the last poll failed: server_error: "
            "HTTP 503 from the provider",
            503,
        ),
        (
            errors.RateLimited("slow down", retry_after=1000.0, status_code=429),
            "no terminal answer before the deadline; the last poll failed: rate_limited: slow down",
            429,
        ),
    ],
    ids=["still-running", "server-errors", "rate-limited"],
)
def test_a_poll_at_the_deadline_times_out_with_the_deadline_as_its_error(
    engine: Engine,
    broker: Broker,
    provider: ScriptedProvider,
    fake_clock: Clock,
    answer: str | errors.ProviderError,
    message: str,
    status_code: int | None,
) -> None:
    provider.script("e1", answer)
    record = ended(engine, broker, fake_clock, track(engine, timeout=60))
    assert record["state"] == "timed_out"
    assert record["error"] == {"kind": "deadline", "message": message, "status_code": status_code}


def test_the_sweeps_deadline_expiry_has_the_same_shape(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    tid = track(engine, timeout=100)
    broker.take_polls()  # every message lost: only the sweep can end it
    fake_clock.advance(131)
    assert engine.sweep().expired == 1
    [(_, record)] = broker.callbacks
    assert record["state"] == "timed_out" and record["tracking_id"] == tid
    assert record["error"] == {
        "kind": "deadline",
        "message": "no terminal answer before the deadline",
        "status_code": None,
    }


def test_completion_and_cancellation_have_no_error_whatever_the_polls_met(
    engine: Engine, broker: Broker, provider: ScriptedProvider, fake_clock: Clock
) -> None:
    flaky = errors.ServerError("HTTP 503", status_code=503)
    provider.script("e1", flaky, "completed")
    done = track(engine, "e1")
    run_to_end(engine, broker, fake_clock)
    provider.script("e2", flaky)
    cancelled = track(engine, "e2")
    for tid, token, countdown in broker.take_polls():
        fake_clock.advance(countdown)
        engine.poll(tid, token, account=broker.account_of[tid])
    assert (engine.get(cancelled) or {})["error"]["kind"] == "server_error"  # active: last poll's
    assert engine.cancel(cancelled)
    assert (engine.get(done) or {})["state"] == "completed"
    assert [r["error"] for _, r in broker.callbacks] == [None]
    assert (engine.get(done) or {})["error"] is None
    assert (engine.get(cancelled) or {})["error"] is None
