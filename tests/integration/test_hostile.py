"""Issue 10: hostile and broken providers and callers, against a real worker, beat and Redis.

Written from the README, the providers' API documents and the issue text only (not from the
implementation). Each test names the numbered item of the issue it shows handled. Item 4
(memory under gzip bombs) is measured by a bench, not here.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export_poller.processes import stand_in
from tests.integration.hostile_harness import (
    CALLBACK_KEY,
    Fleet,
    Handler,
    Request,
    basic_header,
    cometly_answer,
    cometly_lifecycle,
    find_secrets,
    fleet_in,
    redis_dump,
    secret_forms,
    send_json,
    trickle,
    wait_until,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_in(tmp_path)


def track_code(account: str, provider: str, export_id: str, label: str, **extra: str) -> str:
    """Python source of one track_export call with recording callbacks (see hostile_harness)."""
    args = ", ".join(f"{k}={v}" for k, v in extra.items())
    return (
        f"call({label!r}, track_export, {provider!r}, {export_id!r}, account={account!r}, "
        f"on_complete=cb('complete'), on_failure=cb('failure'){', ' + args if args else ''})"
    )


def tracked(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    bad = {k: v for k, v in results.items() if "ok" not in v}
    assert not bad, f"track_export refused healthy exports: {bad}"
    return {k: v["ok"] for k, v in results.items()}


def wait_callbacks_once(
    fleet: Fleet, tids: dict[str, str], timeout: float, expect_tag: dict[str, str] | None = None
) -> None:
    """Each tracking id gets its callback within timeout, and then no second one arrives."""

    def missing() -> list[str]:
        return [label for label, tid in tids.items() if not fleet.callbacks_for(tid)]

    try:
        wait_until(lambda: not missing(), timeout, "callbacks", interval=0.5)
    except AssertionError:
        raise AssertionError(
            f"no callback within {timeout:.0f} s for {missing()} "
            f"(callbacks so far: {[(c.get('export_id'), c.get('tag')) for c in fleet.callbacks()]})"
        ) from None
    time.sleep(4)  # a few sweep intervals: a second callback would show up here
    for label, tid in tids.items():
        got = fleet.callbacks_for(tid)
        assert len(got) == 1, f"{label}: {len(got)} callbacks, expected exactly one"
        if expect_tag and label in expect_tag:
            assert got[0]["tag"] == expect_tag[label], f"{label}: {got[0]['tag']} callback"


# ---------------------------------------------------------------------------------------------
# Sanity: the harness itself (a healthy export, one callback)


def test_harness_healthy_export_gets_one_callback(fleet: Fleet) -> None:
    provider = fleet.account("plain", "cometly", token="plain-" + secrets.token_hex(8))
    provider.script["11"] = cometly_lifecycle(1)
    fleet.worker(concurrency=2)
    fleet.callback_worker()
    fleet.beat()
    tids = tracked(fleet.api(track_code("plain", "cometly", "11", "e11")))
    wait_callbacks_once(fleet, tids, 60, {"e11": "complete"})
    assert provider.polls("11") >= 2


# ---------------------------------------------------------------------------------------------
# 1. Trickling answers


def trickling(handler: Handler, req: Request) -> None:
    trickle(handler, req, every=1.5)


def start_trickles(fleet: Fleet, accounts: int) -> list[Any]:
    providers = []
    for i in range(accounts):
        p = fleet.account(f"slow{i}", "cometly", token=f"slow{i}-" + secrets.token_hex(8))
        p.script[str(900 + i)] = trickling
        providers.append(p)
    return providers


@pytest.mark.timeout(240)
def test_trickling_answers_do_not_freeze_healthy_exports(fleet: Fleet) -> None:
    """Item 1: 5 trickling accounts beside a 4-thread worker (and one trickling export in the
    healthy account itself); the healthy account's exports still complete within 60 s (one
    callback each), and one tracked 20 s later is still polled and completes."""
    slow = start_trickles(fleet, 5)
    healthy = fleet.account("healthy", "cometly", token="healthy-" + secrets.token_hex(8))
    for i in range(201, 208):
        healthy.script[str(i)] = cometly_lifecycle(1)
    healthy.script["299"] = (
        trickling  # one slow export in the healthy account: no train waits on it
    )
    fleet.worker(concurrency=4)
    fleet.callback_worker()
    fleet.beat()

    code = "\n".join(track_code(f"slow{i}", "cometly", str(900 + i), f"s{i}") for i in range(5))
    fleet.api(code + "\n" + track_code("healthy", "cometly", "299", "h299"))
    # Soft synchronisation: let the trickling answers occupy the pool (not an assertion: a fixed
    # worker may never let them take every thread).
    with contextlib.suppress(AssertionError):
        wait_until(lambda: sum(p.inflight for p in slow) >= 4, 25, "4 trickling answers in flight")
    in_flight = sum(p.inflight for p in slow)

    code = "\n".join(track_code("healthy", "cometly", str(i), f"h{i}") for i in range(201, 207))
    tids = tracked(fleet.api(code))
    t0 = time.monotonic()
    # one more, tracked later, while the trickles go on
    wait_until(lambda: time.monotonic() - t0 > 20, 30, "20 s")
    tids.update(tracked(fleet.api(track_code("healthy", "cometly", "207", "h207"))))

    def done() -> list[str]:
        return [label for label, tid in tids.items() if fleet.callbacks_for(tid)]

    try:
        wait_until(lambda: len(done()) == len(tids), 60, "healthy callbacks", interval=0.5)
    except AssertionError:
        polled = {i: healthy.polls(str(i)) for i in range(201, 208)}
        raise AssertionError(
            f"with {in_flight} trickling answers in flight, healthy exports with a callback: "
            f"{sorted(done())} of {sorted(tids)}; polls per healthy export: {polled}"
        ) from None
    assert healthy.polls("207") >= 1, "the export tracked later was never polled"
    time.sleep(4)
    for label, tid in tids.items():
        got = fleet.callbacks_for(tid)
        assert len(got) == 1, f"{label}: {len(got)} callbacks"
        assert got[0]["tag"] == "complete"


@pytest.mark.timeout(180)
def test_worker_stops_on_sigterm_within_the_lease_while_answers_trickle(fleet: Fleet) -> None:
    """Item 1: SIGTERM stops a worker whose threads are reading trickling answers, within
    POLLER_LEASE_SECONDS (30 s here) plus start-up slack."""
    lease = float(fleet.env["POLLER_LEASE_SECONDS"])
    slow = start_trickles(fleet, 5)
    worker = fleet.worker(concurrency=4)
    fleet.api("\n".join(track_code(f"slow{i}", "cometly", str(900 + i), f"s{i}") for i in range(5)))
    wait_until(lambda: sum(p.inflight for p in slow) >= 1, 30, "a trickling answer in flight")
    time.sleep(2)
    t0 = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)
    try:
        wait_until(lambda: not worker.alive(), lease + 15, "the worker to exit after SIGTERM")
    except AssertionError:
        raise AssertionError(
            f"worker still running {time.monotonic() - t0:.0f} s after SIGTERM "
            f"({sum(p.inflight for p in slow)} trickling answers in flight)"
        ) from None


# ---------------------------------------------------------------------------------------------
# 2. Echoed credentials


def echoing_accounts(fleet: Fleet) -> tuple[dict[str, dict[str, str]], list[Any]]:
    """Accounts whose providers quote their credentials back; returns every secret's forms."""
    from urllib.parse import quote

    tok = "ct" + secrets.token_hex(12) + "+/="
    sbg = "sb" + secrets.token_hex(16)
    user1, pw1 = "hostile-user", "Pw1-" + secrets.token_hex(10) + "@/+="
    user2, pw2 = "other-user", "Pw2-" + secrets.token_hex(10) + "&?#"
    wanted = {
        "cometly token": secret_forms(tok),
        "sbg token": secret_forms(sbg),
        "saymon401 password": secret_forms(pw1, user1),
        "saymonok password": secret_forms(pw2, user2),
    }

    def echo_all(secret: str) -> str:
        return f"key {secret} / Bearer {secret} / {quote(secret, safe='')}"

    cometly = fleet.account("echocom", "cometly", token=tok)
    cometly.script["101"] = cometly_lifecycle(
        0,
        "completed",
        message=f"Export done for {echo_all(tok)}",
        debug={"authorization": f"Bearer {tok}", "api_key": tok, "seen": [quote(tok, safe="")]},
    )

    def cometly_failing(handler: Handler, req: Request) -> None:
        status = "processing" if req.n == 1 else "failed"
        body = cometly_answer(req.export_id, status, message=f"Export failed: {echo_all(tok)}")
        body["request_headers"] = {"Authorization": f"Bearer {tok}"}
        send_json(handler, 200, body)

    cometly.script["102"] = cometly_failing

    bdc = fleet.account("echobdc", "biodatacatalyst", token=sbg)

    def sbg_job(state: str, **extra: Any) -> dict[str, Any]:
        return {
            "href": "https://api.sb.biodatacatalyst.nhlbi.nih.gov/v2/storage/exports/x",
            "id": "x",
            "state": state,
            "source": {"file": "567890abc9b0307bc0414164"},
            "destination": {"volume": "rfranklin/output", "location": "output.vcf"},
            "started_on": "2016-06-15T19:17:39Z",
            "properties": {"sse_algorithm": "AES256", "aws_storage_class": "STANDARD"},
            "overwrite": False,
            **extra,
        }

    def sbg_failed(handler: Handler, req: Request) -> None:
        body = sbg_job(
            "FAILED",
            finished_on="2016-06-22T13:38:57Z",
            error={
                "status": 409,
                "code": 9107,
                "message": f"X-SBG-Auth-Token {echo_all(sbg)} may not write here",
                "more_info": f"https://example.invalid/errors?token={quote(sbg, safe='')}",
            },
        )
        body["id"] = req.export_id
        send_json(handler, 200, body)

    def sbg_completed(handler: Handler, req: Request) -> None:
        body = sbg_job("COMPLETED", finished_on="2016-06-15T19:17:41Z", echo={"token": sbg})
        body["id"] = req.export_id
        body["destination"]["location"] = f"out-{sbg}.vcf"
        send_json(handler, 200, body)

    bdc.script["bdc-failed-1"] = sbg_failed
    bdc.script["bdc-done-1"] = sbg_completed

    say401 = fleet.account("echosay", "saymon", username=user1, password=pw1)

    def saymon_401_echo(handler: Handler, req: Request) -> None:
        auth = {k.lower(): v for k, v in req.headers.items()}.get("authorization", "")
        b64 = auth.removeprefix("Basic ")
        send_json(
            handler,
            401,
            {
                "error": "Unauthorized",
                "message": f"credentials refused: Authorization: {auth} ({b64})",
                "authorization": auth,
                "password": pw1,
                "password_urlencoded": quote(pw1, safe=""),
            },
            headers={"WWW-Authenticate": 'Basic realm="saymon"', "X-Echo-Authorization": auth},
        )

    saymon_401_echo.ignore_auth = True  # type: ignore[attr-defined]
    say401.script["op-401"] = saymon_401_echo

    sayok = fleet.account("sayok", "saymon", username=user2, password=pw2)

    def saymon_ok_echo(handler: Handler, req: Request) -> None:
        auth = basic_header(user2, pw2)
        body = {"finished": req.n >= 2, "echo": auth, "login": user2, "password": pw2}
        body["password_urlencoded"] = quote(pw2, safe="")
        send_json(handler, 200, body)

    sayok.script["op-ok"] = saymon_ok_echo

    return wanted, [say401, sayok]


@pytest.mark.timeout(180)
def test_echoed_credentials_are_never_stored_logged_or_forwarded(fleet: Fleet) -> None:
    """Item 2: a Cometly and a Seven Bridges account whose 2xx answers quote the token (message,
    a FAILED job's error.message, raw fields), a SAYMON 401 that echoes the Authorization header
    and a SAYMON 2xx that does: afterwards no form of any secret is in Redis (every key), the
    DEBUG logs of worker, beat and callback worker, `status --json`, `list --json` or the
    callback payloads."""
    wanted, (say401, sayok) = echoing_accounts(fleet)
    fleet.worker(concurrency=4, loglevel="DEBUG")
    fleet.callback_worker(loglevel="DEBUG")
    fleet.beat(loglevel="DEBUG")

    code = "\n".join(
        [
            track_code("echocom", "cometly", "101", "com-done"),
            track_code("echocom", "cometly", "102", "com-failed"),
            track_code("echobdc", "biodatacatalyst", "bdc-failed-1", "bdc-failed"),
            track_code("echobdc", "biodatacatalyst", "bdc-done-1", "bdc-done"),
            track_code("echosay", "saymon", "op-401", "say-401"),
            track_code("sayok", "saymon", "op-ok", "say-ok"),
        ]
    )
    tids = tracked(fleet.api(code))
    wait_callbacks_once(
        fleet,
        tids,
        90,
        {
            "com-done": "complete",
            "com-failed": "failure",
            "bdc-failed": "failure",
            "bdc-done": "complete",
            "say-401": "failure",
            "say-ok": "complete",
        },
    )
    assert say401.polls("op-401") >= 2 and sayok.polls("op-ok") >= 2

    leaks: dict[str, list[str]] = {}

    def check(where: str, text: str) -> None:
        found = find_secrets(text, wanted)
        if found:
            leaks[where] = found

    check("callback payloads", json.dumps(fleet.callbacks()))
    check("redis", redis_dump(fleet.redis.client, exclude=(CALLBACK_KEY,)))
    for label, tid in tids.items():
        out = fleet.cli("status", tid, "--json")
        assert out.returncode == 0, out.stderr
        check(f"status --json ({label})", out.stdout.decode("utf-8", "replace"))
    out = fleet.cli("list", "--json")
    check("list --json", out.stdout.decode("utf-8", "replace"))
    for proc in fleet.procs:
        if proc.name != "redis":
            check(f"{proc.name} DEBUG log", proc.output())
    assert not leaks, f"secrets found: {json.dumps(leaks, indent=1)}"


# ---------------------------------------------------------------------------------------------
# 3. Kombu-shaped provider fields


@pytest.mark.timeout(180)
def test_kombu_shaped_fields_still_yield_exactly_one_callback(fleet: Fleet) -> None:
    """Item 3: provider answers holding {"__type__": ..., "__value__": ...} shapes (valid and
    invalid datetime, an unknown type, bytes/uuid/decimal) anywhere in their fields: each export
    still gets exactly one callback of the right kind."""
    k = fleet.account("kombu", "cometly", token="kombu-" + secrets.token_hex(8))
    dt_ok = {"__type__": "datetime", "__value__": "2024-01-15T10:33:42Z"}
    dt_bad = {"__type__": "datetime", "__value__": "not a date"}
    evil = {"__type__": "evil", "__value__": 1}
    k.script["301"] = cometly_lifecycle(0, "completed", meta=dt_ok)
    k.script["302"] = cometly_lifecycle(0, "completed", meta=dt_bad)
    k.script["303"] = cometly_lifecycle(0, "completed", meta=evil)
    k.script["304"] = cometly_lifecycle(
        1, "failed", details=[{"__type__": "bytes", "__value__": "%%%"}, evil]
    )
    k.script["305"] = cometly_lifecycle(
        0,
        "completed",
        nested={
            "a": {"__type__": "uuid", "__value__": "zzz"},
            "b": [{"__type__": "decimal", "__value__": "x"}],
            "c": {"__type__": "date", "__value__": "2024-13-45"},
        },
    )
    k.script["306"] = cometly_lifecycle(0, "completed", meta=[dt_ok, dt_bad, evil])
    k.script["307"] = cometly_lifecycle(0)
    fleet.worker(concurrency=4)
    fleet.callback_worker()
    fleet.beat()

    labels = {f"e{i}": str(i) for i in range(301, 307)}
    code = "\n".join(track_code("kombu", "cometly", eid, label) for label, eid in labels.items())
    # a caller's metadata of the same shape: refused at track_export, or its callback arrives
    code += "\n" + track_code(
        "kombu",
        "cometly",
        "307",
        "meta307",
        metadata='{"when": {"__type__": "datetime", "__value__": "nope"}, "x": '
        '{"__type__": "evil", "__value__": 1}}',
    )
    results = fleet.api(code)
    meta = results.pop("meta307")
    tids = tracked(results)
    if "ok" in meta:
        tids["meta307"] = meta["ok"]
    else:
        assert meta["value_error"], f"kombu-shaped metadata refused with {meta}"
    expect = {label: "complete" for label in tids}
    expect["e304"] = "failure"
    wait_callbacks_once(fleet, tids, 75, expect)
    for label, tid in tids.items():
        state = fleet.callbacks_for(tid)[0]["state"]
        assert state == ("failed" if label == "e304" else "completed"), f"{label}: {state}"


# ---------------------------------------------------------------------------------------------
# 5. Bad callbacks


BAD_CALLBACKS = {
    "dict exports.sweep": '{"task": "exports.sweep"}',
    "signature exports.sweep": 'signature("exports.sweep")',
    "exports.poll forged": '{"task": "exports.poll", "args": ["hx:forged", "token"]}',
    "exports.track forged": '{"task": "exports.track", "args": ["cometly", "1"]}',
    "celery.backend_cleanup": '{"task": "celery.backend_cleanup"}',
    "celery.chord_unlock": 'signature("celery.chord_unlock", args=("x",))',
    "5 MB args": 'signature("hostile.record", args=("x" * 5_000_000,), queue="hostile-cb")',
    "5 MB kwargs": '{"task": "hostile.record", "kwargs": {"blob": "y" * 5_000_000}}',
    "task not a string": '{"task": 5}',
    "args not a list": '{"task": "hostile.record", "args": {"a": 1}}',
    "kwargs not a dict": '{"task": "hostile.record", "kwargs": [1, 2]}',
}


@pytest.mark.timeout(180)
def test_callbacks_naming_service_or_celery_tasks_or_oversized_are_refused(fleet: Fleet) -> None:
    """Item 5: track_export refuses (a ValueError subclass, ConfigurationError) an on_complete or
    on_failure naming exports.* / celery.* tasks, a 5 MB signature, a malformed one; nothing is
    stored. The CLI refuses --on-complete exports.sweep with exit code 2."""
    fleet.account("cbs", "cometly", token="cbs-" + secrets.token_hex(8))
    stand_in(fleet.env)  # no worker runs: the legitimate export at the end stays pending
    before = redis_dump(fleet.redis.client)
    lines = []
    for i, (label, sig) in enumerate(BAD_CALLBACKS.items()):
        slot = "on_complete" if i % 2 == 0 else "on_failure"
        lines.append(
            f"call({label!r}, track_export, 'cometly', '{700 + i}', account='cbs', {slot}={sig})"
        )
    results = fleet.api("\n".join(lines))
    accepted = {k: v for k, v in results.items() if "ok" in v}
    wrong_type = {
        k: v["exc"] for k, v in results.items() if "exc" in v and not v["configuration_error"]
    }
    assert not accepted and not wrong_type, (
        f"accepted: {sorted(accepted)}; refused, but not with ConfigurationError: {wrong_type}"
    )
    assert redis_dump(fleet.redis.client) == before, "a refused call stored something"

    out = fleet.cli("track", "cometly", "799", "--account", "cbs", "--on-complete", "exports.sweep")
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert len(out.stderr.decode().strip().splitlines()) == 1, out.stderr

    # a legitimate callback is still accepted
    ok = fleet.api(track_code("cbs", "cometly", "798", "legit"))
    assert "ok" in ok["legit"], ok


POISONED_CALLBACKS = {
    # the callback task exists in the dispatching worker (-I hostile_callbacks), but these
    # arguments do not fit record(rec, tag): Celery refuses them when sending
    "kwargs do not fit": '{"task": "hostile.record", "args": ["complete"], "kwargs": '
    '{"bogus": 1}, "options": {"queue": "hostile-cb"}}',
    "too many args": '{"task": "hostile.record", "args": ["complete", 2, 3, 4], '
    '"options": {"queue": "hostile-cb"}}',
    # options Celery cannot send with
    "countdown not a number": '{"task": "hostile.record", "args": ["complete"], '
    '"options": {"queue": "hostile-cb", "countdown": "soon"}}',
    "expires not a time": '{"task": "hostile.record", "args": ["complete"], '
    '"options": {"queue": "hostile-cb", "expires": "never"}}',
}


@pytest.mark.timeout(180)
def test_undispatchable_callbacks_do_not_block_other_exports(fleet: Fleet) -> None:
    """Item 5: callbacks that pass or fail track_export's checks but cannot be sent (arguments
    that don't fit the task, options Celery cannot send with) never stop the sweep: exports of
    another account whose later polls wait in Redis for the sweep (POLLER_ENQUEUE_HORIZON 1 s,
    backoff 3 s) still complete, one callback each; and the sweep task stops failing
    (`Task exports.sweep[...] raised` in the worker log) within a minute: a poisoned entry is
    not retried forever."""
    fleet.env.update(
        {
            "POLLER_ENQUEUE_HORIZON": "1",
            "POLLER_BACKOFF_INITIAL": "3",
            "POLLER_BACKOFF_MAX": "3",
            "POLLER_BACKOFF_FLOOR": "2",
            "POLLER_RESCUE_GRACE": "2",
        }
    )
    poison = fleet.account("poison", "cometly", token="poison-" + secrets.token_hex(8))
    healthy = fleet.account("fine", "cometly", token="fine-" + secrets.token_hex(8))
    for i in range(len(POISONED_CALLBACKS)):
        poison.script[str(401 + i)] = cometly_lifecycle(0)
    for i in range(501, 506):
        healthy.script[str(i)] = cometly_lifecycle(2)
    fleet.worker(concurrency=4)
    fleet.callback_worker()
    fleet.beat()

    lines = [
        f"call({label!r}, track_export, 'cometly', '{401 + i}', account='poison', "
        f"on_complete={sig})"
        for i, (label, sig) in enumerate(POISONED_CALLBACKS.items())
    ]
    results = fleet.api("\n".join(lines))
    wrong = {k: v for k, v in results.items() if "exc" in v and not v["value_error"]}
    assert not wrong, f"refused with a type that is not a ValueError: {wrong}"
    accepted = [k for k, v in results.items() if "ok" in v]
    ids = [str(401 + i) for i, k in enumerate(POISONED_CALLBACKS) if k in accepted]
    if ids:
        wait_until(lambda: all(poison.polls(i) for i in ids), 30, "the poisoned exports' polls")
        time.sleep(4)  # past the rescue grace: the sweep now meets the poisoned outbox entries

    code = "\n".join(track_code("fine", "cometly", str(i), f"f{i}") for i in range(501, 506))
    tids = tracked(fleet.api(code))
    try:
        wait_callbacks_once(fleet, tids, 75, dict.fromkeys(tids, "complete"))
    except AssertionError as exc:
        polls = {i: healthy.polls(str(i)) for i in range(501, 506)}
        raise AssertionError(
            f"{exc}; poisoned callbacks accepted by track_export: {accepted}; "
            f"healthy polls: {polls}; failed sweeps in the worker log: {failed_sweeps(fleet)}"
        ) from None

    # The sweep is not failing for good: a poisoned entry is retried a bounded number of times
    # and then moved aside, so within a minute the sweep runs 10 s in a row without failing.
    def quiet() -> bool:
        now = failed_sweeps(fleet)
        history.append((time.monotonic(), now))
        return any(t < history[-1][0] - 10 and n == now for t, n in history)

    history: list[tuple[float, int]] = []
    try:
        wait_until(quiet, 60, "10 s without a failed sweep", interval=1)
    except AssertionError:
        raise AssertionError(
            f"the sweep still fails {failed_sweeps(fleet)} times in the worker log, a minute "
            f"after the poisoned callbacks ({accepted}) were accepted; last: "
            f"{re.findall(SWEEP_FAILED, fleet.logs())[-1:]}"
        ) from None


SWEEP_FAILED = r"Task exports\.sweep\[[^\]]*\] raised[^\n]*"


def failed_sweeps(fleet: Fleet) -> int:
    return len(re.findall(SWEEP_FAILED, fleet.logs()))


# ---------------------------------------------------------------------------------------------
# 6. Inputs


@pytest.mark.timeout(180)
def test_bad_inputs_raise_the_documented_errors_and_store_nothing(fleet: Fleet) -> None:
    """Item 6: metadata nested 40 (and 990, 5000) deep, timeout 10**400 / -10**400 / inf: a
    ConfigurationError, never RecursionError or OverflowError; nothing stored."""
    fleet.account("inputs", "cometly", token="inputs-" + secrets.token_hex(8))
    before = redis_dump(fleet.redis.client)
    code = """
def nested(depth):
    d = {}
    for _ in range(depth):
        d = {"a": d}
    return d

for depth in (40, 990, 5000):
    call(f"metadata depth {depth}", track_export, "cometly", str(depth), account="inputs",
         metadata=nested(depth))
call("metadata list depth 40", track_export, "cometly", "41", account="inputs",
     metadata={"a": eval("[" * 40 + "]" * 40)})
call("timeout 10**400", track_export, "cometly", "1", account="inputs", timeout=10**400)
call("timeout -10**400", track_export, "cometly", "2", account="inputs", timeout=-(10**400))
call("timeout inf", track_export, "cometly", "3", account="inputs", timeout=float("inf"))
call("timeout 2**1024 as int", track_export, "cometly", "4", account="inputs", timeout=2**1024)
"""
    results = fleet.api(code)
    bad = {
        k: f"{v.get('exc', 'accepted')}: {v.get('msg', '')[:120]}"
        for k, v in results.items()
        if not v.get("configuration_error")
    }
    assert not bad, f"not refused with ConfigurationError: {json.dumps(bad, indent=1)}"
    assert redis_dump(fleet.redis.client) == before, "a refused call stored something"


BAD_IDS = {
    "lone surrogate": "ab\\ud800cd",
    "C1 control NEL": "ab\\x85cd",
    "C1 control CSI": "ab\\x9bcd",
    "bidi override RLO": "ab\\u202ecd",
    "bidi isolate LRI": "ab\\u2066cd",
}


@pytest.mark.timeout(180)
def test_export_ids_with_surrogates_c1_or_bidi_controls(fleet: Fleet) -> None:
    """Item 6: an export id with a lone surrogate, a C1 control or a bidi control is refused with
    InvalidExportId (a lone surrogate never gives UnicodeEncodeError); an id the README would
    accept instead must at least never be printed raw by `export-poller list`."""
    fleet.account("ids", "biodatacatalyst", token="ids-" + secrets.token_hex(8))
    before = redis_dump(fleet.redis.client)
    code = "\n".join(
        f'call({label!r}, track_export, "biodatacatalyst", "{literal}", account="ids")'
        for label, literal in BAD_IDS.items()
    )
    results = fleet.api(code)
    raw_chars = {
        "lone surrogate": b"\xed\xa0\x80",
        "C1 control NEL": "\x85".encode(),
        "C1 control CSI": "\x9b".encode(),
        "bidi override RLO": "\u202e".encode(),
        "bidi isolate LRI": "\u2066".encode(),
    }
    problems = {}
    for label, outcome in results.items():
        if "exc" in outcome:
            if not outcome["invalid_export_id"]:
                problems[label] = f"refused with {outcome['exc']}, not InvalidExportId"
            continue
        # accepted: the CLI must escape it
        for args in (("list",), ("list", "--json")):
            out = fleet.cli(*args)
            if out.returncode != 0:
                problems[label] = f"accepted, and `{' '.join(args)}` exits {out.returncode}"
            elif raw_chars[label] in out.stdout:
                problems[label] = f"accepted, and printed raw by `{' '.join(args)}`"
        problems.setdefault(label, "accepted (the CLI escapes it)")
    refused_all = not [v for v in problems.values() if not v.startswith("accepted (the CLI")]
    assert refused_all, f"bad export ids: {json.dumps(problems, indent=1)}"
    if not any(v.startswith("accepted") for v in problems.values()):
        assert redis_dump(fleet.redis.client) == before, "a refused call stored something"


# ---------------------------------------------------------------------------------------------
# 7. Safe defaults


def test_settings_repr_and_errors_hide_secrets(fleet: Fleet) -> None:
    """Item 7: repr() and str() of the Settings object (export_poller.config, named `Settings` in
    the issue) show no Redis / broker password and no account secret; a malformed base URL with
    userinfo stops the CLI without echoing the password."""
    redis_pw, broker_pw = "rpw" + secrets.token_hex(8), "bpw" + secrets.token_hex(8)
    tok = "tok" + secrets.token_hex(10)
    fleet.env["POLLER_REDIS_URL"] = f"redis://:{redis_pw}@127.0.0.1:6399/0"
    fleet.env["POLLER_BROKER_URL"] = f"redis://user:{broker_pw}@127.0.0.1:6399/1"
    fleet.account("settingsacct", "cometly", token=tok)
    code = """
try:
    from export_poller.config import Settings
except ImportError as exc:
    RESULTS["import"] = {"exc": repr(exc)}
else:
    s = Settings()
    RESULTS["repr"] = {"ok": repr(s)}
    RESULTS["str"] = {"ok": str(s)}
"""
    results = fleet.api(code)
    if "import" in results:
        pytest.skip(f"no export_poller.config.Settings: {results['import']}")
    text = results["repr"]["ok"] + "\n" + results["str"]["ok"]
    secrets_ = {"redis password": redis_pw, "broker password": broker_pw, "token": tok}
    problems = [f"repr/str(Settings()) shows the {n}" for n, v in secrets_.items() if v in text]

    # a base URL that is not a URL, carrying userinfo: the start-up error must not echo it
    bad_pw = "bu" + secrets.token_hex(8)
    fleet.env["POLLER_REDIS_URL"] = fleet.redis.url
    fleet.env["POLLER_BROKER_URL"] = fleet.redis.url
    fleet.env["POLLER_ACCOUNTS__SETTINGSACCT__BASE_URL"] = f"ftp://admin:{bad_pw}@[::1/x"
    out = fleet.cli("list")
    if out.returncode != 2:
        problems.append(f"a malformed BASE_URL: exit code {out.returncode}, not 2")
    if bad_pw in (out.stdout + out.stderr).decode("utf-8", "replace"):
        problems.append("the settings error echoes the BASE_URL's password")
    assert not problems, problems


def test_procfile_binds_flower_to_loopback() -> None:
    """Item 7: Flower as the Procfile starts it listens on 127.0.0.1 unless told otherwise."""
    lines = (REPO / "Procfile").read_text().splitlines()
    flower = [line for line in lines if line.split(":", 1)[0].strip() == "flower"]
    assert flower, "no flower process in the Procfile"
    assert re.search(r"--address[= ](\$\{[A-Z_]+:-)?127\.0\.0\.1", flower[0]), flower[0]
