"""The provider simulator as real HTTP clients see it: lifecycles, credentials, tenant isolation,
faults, rate limits, the control API and the command line.

Every request goes over a socket to a waitress server started with `start_in_thread(port=0)`.
Time-dependent behaviour is driven by an injected clock, never by sleeping.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Unpack

import pytest
import requests
from requests_aws4auth import AWS4Auth  # type: ignore[import-untyped]

from export_poller.providers.simulator import (
    RunningSimulator,
    SimulatorClient,
    SimulatorError,
    start_in_thread,
)
from export_poller.providers.simulator.options import OptionFields
from export_poller.providers.simulator.server import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sim-token"
BASIC = ("sim", "sim-password")
AWS_KEY = ("SIMACCESSKEY", "sim-secret-key")
REGION = "us-east-1"
PROVIDERS = ("chaossearch", "saymon", "biodatacatalyst", "cgc", "cometly")


class FakeClock:
    """The simulator's clock: starts at real time (SigV4 dates stay valid) and moves on demand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Caller:
    """Asks a provider about one export exactly as its documented API expects."""

    def __init__(self, base_url: str, session: requests.Session) -> None:
        self.url = base_url
        self.http = session

    def status(self, provider: str, job_id: object, credential: Any = None) -> requests.Response:
        ask: Callable[[str, Any], requests.Response] = getattr(self, f"_{provider}")
        return ask(str(job_id), credential)

    def _chaossearch(self, job_id: str, credential: Any) -> requests.Response:
        key, secret = credential or AWS_KEY
        auth = AWS4Auth(key, secret, REGION, "s3")
        return self.http.post(
            f"{self.url}/bulkexport/status", json={"id": job_id}, auth=auth, allow_redirects=False
        )

    def _saymon(self, job_id: str, credential: Any) -> requests.Response:
        return self.http.get(f"{self.url}/node/api/bulk/{job_id}/status", auth=credential or BASIC)

    def _biodatacatalyst(self, job_id: str, credential: Any) -> requests.Response:
        headers = {"X-SBG-Auth-Token": credential or TOKEN}
        return self.http.get(f"{self.url}/v2/storage/exports/{job_id}", headers=headers)

    def _cgc(self, job_id: str, credential: Any) -> requests.Response:
        return self.bulk([job_id], credential)

    def bulk(self, job_ids: list[str], credential: Any = None) -> requests.Response:
        return self.http.post(
            f"{self.url}/v2/bulk/storage/exports/get",
            json={"export_ids": job_ids},
            headers={"X-SBG-Auth-Token": credential or TOKEN},
        )

    def _cometly(self, job_id: str, credential: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {credential or TOKEN}"}
        return self.http.get(f"{self.url}/public-api/v1/events/exports/{job_id}", headers=headers)


def state_of(provider: str, body: dict[str, Any]) -> str:
    """The provider's answer reduced to pending/running/completed/failed (SAYMON: finished)."""
    if provider == "chaossearch":
        partitions = body["status"]["partitions"]
        started = partitions["completed"]["count"] + partitions["active"]["count"] > 0
        return {"Success": "completed", "Failed": "failed"}.get(
            body["message"], "running" if started else "pending"
        )
    if provider == "saymon":
        return "finished" if body["finished"] else "unfinished"
    if provider == "cgc":
        return str(body["items"][0]["resource"]["state"]).lower()
    if provider == "cometly":
        status = str(body["status"])
        return {"queued": "pending", "processing": "running"}.get(status, status)
    return str(body["state"]).lower()


@pytest.fixture
def start() -> Iterator[Callable[..., RunningSimulator]]:
    running: list[RunningSimulator] = []

    def _start(**options: Unpack[OptionFields]) -> RunningSimulator:
        sim = start_in_thread(port=0, **options)
        running.append(sim)
        return sim

    yield _start
    for sim in running:
        sim.stop()


@pytest.fixture
def sim(start: Callable[..., RunningSimulator]) -> RunningSimulator:
    return start()


@pytest.fixture
def control(sim: RunningSimulator) -> Iterator[SimulatorClient]:
    with SimulatorClient(sim.url) as client:
        yield client


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def caller(sim: RunningSimulator, http: requests.Session) -> Caller:
    return Caller(sim.url, http)


def poll_states(caller: Caller, provider: str, job_id: object, count: int) -> list[str]:
    states = []
    for _ in range(count):
        response = caller.status(provider, job_id)
        assert response.status_code == 200, response.text
        states.append(state_of(provider, response.json()))
    return states


# -- lifecycles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_job_runs_to_completion(provider: str, caller: Caller, control: SimulatorClient) -> None:
    job_id = control.create_job(provider, pending_polls=1, running_polls=2)

    states = poll_states(caller, provider, job_id, 5)

    if provider == "saymon":
        assert states == ["unfinished"] * 3 + ["finished"] * 2
    else:
        assert states == ["pending", "running", "running", "completed", "completed"]
    job = control.job(provider, job_id)
    assert (job["state"], job["polls"], job["answered"], job["faulted"]) == ("completed", 5, 5, 0)
    assert job["created_at"] <= job["started_at"] <= job["finished_at"] <= job["reported_at"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_job_fails(provider: str, caller: Caller, control: SimulatorClient) -> None:
    job_id = control.create_job(provider, outcome="failed", pending_polls=0, running_polls=1)

    states = poll_states(caller, provider, job_id, 2)

    assert states == (["unfinished", "finished"] if provider == "saymon" else ["running", "failed"])
    assert control.job(provider, job_id)["state"] == "failed"


def test_terminal_answers_carry_each_providers_result_fields(
    caller: Caller, control: SimulatorClient
) -> None:
    ids = {p: control.create_job(p, pending_polls=0, running_polls=0) for p in PROVIDERS}
    failed = {
        p: control.create_job(p, outcome="failed", pending_polls=0, running_polls=0)
        for p in PROVIDERS
    }
    done = {p: caller.status(p, ids[p]).json() for p in PROVIDERS}
    bad = {p: caller.status(p, failed[p]).json() for p in PROVIDERS}

    chaos = done["chaossearch"]
    assert chaos["status"]["queryCompleted"] is True
    assert chaos["totalFilesExported"] == chaos["status"]["partitions"]["total"]["count"] == 10
    assert bad["chaossearch"]["message"] == "Failed"
    assert bad["chaossearch"]["status"]["partitions"]["failed"]["count"] > 0
    assert {"started_on", "finished_on"} <= set(done["biodatacatalyst"])
    assert bad["biodatacatalyst"]["error"]["code"] == 9107
    assert done["cgc"]["items"][0]["resource"]["result"]["storage"]["type"] == "VOLUME"
    assert bad["cgc"]["items"][0]["resource"]["state"] == "FAILED"
    cometly = done["cometly"]
    assert cometly["export_id"] == ids["cometly"] and isinstance(cometly["export_id"], int)
    assert (
        cometly["download_url"].startswith("https://")
        and "X-Amz-Signature=" in cometly["download_url"]
    )
    assert cometly["expires_at"] > cometly["completed_at"]
    assert bad["cometly"]["status"] == "failed" and bad["cometly"]["message"]


def test_a_timed_job_follows_the_clock(
    start: Callable[..., RunningSimulator], http: requests.Session
) -> None:
    clock = FakeClock()
    sim = start(clock=clock)
    caller = Caller(sim.url, http)
    with sim.client() as control:
        job_id = control.create_job("biodatacatalyst", duration_s=100)
        seen = []
        for step in (0, 10, 89.9, 0.1):
            clock.advance(step)
            seen.append(
                state_of("biodatacatalyst", caller.status("biodatacatalyst", job_id).json())
            )
        job = control.job("biodatacatalyst", job_id)

    assert seen == ["pending", "running", "running", "completed"]
    assert job["finished_at"] == pytest.approx(job["created_at"] + 100)
    assert job["reported_at"] == pytest.approx(clock.now)


# -- credentials and tenants ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "credential", "status"),
    [
        ("chaossearch", ("SIMACCESSKEY", "wrong-secret"), 403),
        ("chaossearch", ("UNKNOWNKEY", "sim-secret-key"), 403),
        ("saymon", ("sim", "wrong-password"), 401),
        ("biodatacatalyst", "wrong-token", 401),
        ("cgc", "wrong-token", 401),
        ("cometly", "wrong-key", 401),
    ],
)
def test_wrong_credentials_are_refused(
    provider: str, credential: Any, status: int, caller: Caller, control: SimulatorClient
) -> None:
    job_id = control.create_job(provider)

    response = caller.status(provider, job_id, credential)

    assert response.status_code == status
    assert control.job(provider, job_id)["polls"] == 0
    body = response.json()
    if provider == "saymon":
        assert json.loads(body["message"]) == {"code": 401, "message": "Unauthorized"}
    elif provider in ("biodatacatalyst", "cgc"):
        assert set(body) == {"status", "code", "message", "more_info"}
    elif provider == "chaossearch":
        known = credential[0] == "SIMACCESSKEY"
        assert body["code"] == ("SignatureDoesNotMatch" if known else "InvalidAccessKeyId")


def _signed(url: str, body: dict[str, Any], **headers: str) -> requests.PreparedRequest:
    request = requests.Request("POST", url, json=body, headers=headers).prepare()
    signed: requests.PreparedRequest = AWS4Auth(*AWS_KEY, REGION, "s3")(request)
    return signed


def test_sigv4_is_recomputed_not_just_present(
    sim: RunningSimulator, http: requests.Session, control: SimulatorClient
) -> None:
    job_id = str(control.create_job("chaossearch"))
    url = f"{sim.url}/bulkexport/status"

    tampered = _signed(url, {"id": job_id})
    tampered.body = json.dumps({"id": "someone-elses"}).encode()
    tampered.headers["Content-Length"] = str(len(tampered.body))
    moved = _signed(url, {"id": job_id})
    moved.url = f"{url}?redirected=1"
    hour_ago = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 3600))
    stale = _signed(url, {"id": job_id}, **{"x-amz-date": hour_ago})

    codes = [http.send(r).json()["code"] for r in (tampered, moved, stale)]
    unsigned = http.post(url, json={"id": job_id})

    assert codes == ["XAmzContentSHA256Mismatch", "SignatureDoesNotMatch", "RequestTimeTooSkewed"]
    assert unsigned.status_code == 403
    assert http.send(_signed(url, {"id": job_id})).status_code == 200


@pytest.mark.parametrize(
    ("provider", "options", "owner", "mine", "theirs"),
    [
        ("cometly", {"tokens": ["space-a", "space-b"]}, "space-a", "space-a", "space-b"),
        ("cgc", {"tokens": ["space-a", "space-b"]}, "space-a", "space-a", "space-b"),
        ("saymon", {"users": {"al": "pw-a", "bo": "pw-b"}}, "al", ("al", "pw-a"), ("bo", "pw-b")),
        ("chaossearch", {"aws_keys": {"KA": "sa", "KB": "sb"}}, "KA", ("KA", "sa"), ("KB", "sb")),
    ],
)
def test_another_tenants_job_looks_missing(
    provider: str,
    options: dict[str, Any],
    owner: str,
    mine: Any,
    theirs: Any,
    start: Callable[..., RunningSimulator],
    http: requests.Session,
) -> None:
    sim = start(**options)
    caller = Caller(sim.url, http)
    with sim.client() as control:
        job_id = control.create_job(provider, owner=owner)
        own = caller.status(provider, job_id, mine)
        other = caller.status(provider, job_id, theirs)
        missing = caller.status(provider, "999999", theirs)
        polls = control.job(provider, job_id)["polls"]

    assert own.status_code == 200
    assert (other.status_code, other.content) == (missing.status_code, missing.content)
    assert other.status_code == (200 if provider == "cgc" else 404)
    assert polls == 1


def test_an_owner_must_be_a_configured_credential(control: SimulatorClient) -> None:
    with pytest.raises(SimulatorError) as refused:
        control.create_job("cometly", owner="nobody")
    assert refused.value.status == 400


# -- faults ---------------------------------------------------------------------------------------


def test_per_job_faults_fire_at_their_polls_and_do_not_advance_the_job(
    caller: Caller, control: SimulatorClient
) -> None:
    job_id = control.create_job(
        "biodatacatalyst",
        pending_polls=1,
        running_polls=1,
        faults=[
            {"kind": "503", "polls": [1]},
            {"kind": "429", "polls": [3], "retry_after": 7},
        ],
    )

    answers = [caller.status("biodatacatalyst", job_id) for _ in range(5)]

    assert [a.status_code for a in answers] == [503, 200, 429, 200, 200]
    assert answers[0].json()["code"] == 0
    throttled = answers[2]
    assert throttled.json()["code"] == 1000
    assert throttled.headers["X-RateLimit-Remaining"] == "0"
    assert int(throttled.headers["X-RateLimit-Reset"]) - time.time() == pytest.approx(7, abs=2)
    assert [state_of("biodatacatalyst", answers[i].json()) for i in (1, 3, 4)] == [
        "pending",
        "running",
        "completed",
    ]
    job = control.job("biodatacatalyst", job_id)
    assert (job["polls"], job["answered"], job["faulted"]) == (5, 3, 2)


@pytest.mark.parametrize("kind", ["500", "503", "404", "401", "429", "garbage", "reset", "slow"])
def test_each_fault_kind(kind: str, caller: Caller, control: SimulatorClient) -> None:
    job_id = control.create_job(
        "cometly", faults=[{"kind": kind, "polls": [1], "delay_s": 0.2, "retry_after": 3}]
    )
    started = time.monotonic()

    try:
        first: requests.Response | None = caller.status("cometly", job_id)
    except requests.ConnectionError:
        first = None
    elapsed = time.monotonic() - started
    second = caller.status("cometly", job_id)

    if kind == "reset":
        assert first is None
    elif kind == "garbage":
        assert first is not None and first.status_code == 200
        with pytest.raises(ValueError):
            first.json()
    elif kind == "slow":
        assert first is not None and first.json()["status"] == "queued" and elapsed >= 0.2
    else:
        assert first is not None and first.status_code == int(kind)
    if kind == "429":
        assert first is not None and first.headers["Retry-After"] == "3"
    answered = control.job("cometly", job_id)["answered"]
    assert second.status_code == 200
    assert answered == (2 if kind == "slow" else 1)


def test_chaossearch_redirects_and_the_redirected_request_is_verified_again(
    sim: RunningSimulator, http: requests.Session, caller: Caller, control: SimulatorClient
) -> None:
    job_id = str(control.create_job("chaossearch", faults=[{"kind": "redirect", "polls": [1]}]))

    moved = caller.status("chaossearch", job_id)
    location = moved.headers["Location"]
    followed = http.post(
        location, json={"id": job_id}, auth=AWS4Auth(*AWS_KEY, REGION, "s3"), allow_redirects=False
    )

    assert moved.status_code == 307
    assert location == f"{sim.url}/bulkexport/status?redirected=1"
    assert followed.status_code == 200 and followed.json()["message"] == "Running"
    assert control.job("chaossearch", job_id)["polls"] == 2


def test_global_faults_hit_the_chosen_providers_and_replay_with_a_seed(
    caller: Caller, control: SimulatorClient
) -> None:
    saymon = control.create_job("saymon", running_polls=50)
    cometly = control.create_job("cometly", running_polls=50)

    control.set_faults(1.0, ["garbage"], providers=["saymon"])
    garbage = caller.status("saymon", saymon)
    untouched = caller.status("cometly", cometly)
    runs = []
    for _ in range(2):
        control.set_faults(0.5, ["500", "503"], providers=["saymon"], seed=7)
        runs.append([caller.status("saymon", saymon).status_code for _ in range(20)])
    control.set_faults(0)
    healed = caller.status("saymon", saymon)

    assert garbage.headers["Content-Type"] == "text/html"
    assert untouched.status_code == 200
    assert runs[0] == runs[1] and {200, 500, 503} >= set(runs[0]) and len(set(runs[0])) > 1
    assert healed.status_code == 200


# -- rate limits ----------------------------------------------------------------------------------


def test_cometly_allows_30_requests_a_minute_then_asks_to_retry_later(
    start: Callable[..., RunningSimulator], http: requests.Session
) -> None:
    clock = FakeClock()
    sim = start(clock=clock)
    caller = Caller(sim.url, http)
    with sim.client() as control:
        job_id = control.create_job("cometly", running_polls=100)
        allowed = [caller.status("cometly", job_id) for _ in range(30)]
        clock.advance(15)
        refused = caller.status("cometly", job_id)
        clock.advance(45)
        again = caller.status("cometly", job_id)
        stats = control.stats()["providers"]["cometly"]

    assert {r.status_code for r in allowed} == {200}
    assert [r.headers["X-RateLimit-Remaining"] for r in allowed[-2:]] == ["1", "0"]
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "45"
    assert again.status_code == 200
    token = stats["credentials"][TOKEN]
    assert (token["rate_limited"], token["throttled"], token["max_in_window"]) == (1, 1, 31)
    assert stats["statuses"] == {"200": 31, "429": 1}


def test_seven_bridges_rate_limit_headers_count_requests_per_token(
    start: Callable[..., RunningSimulator], http: requests.Session
) -> None:
    clock = FakeClock()
    sim = start(clock=clock, sbg_limit="3/300")
    caller = Caller(sim.url, http)
    with sim.client() as control:
        ids = [str(control.create_job("biodatacatalyst")) for _ in range(3)]
        answers = [caller.status("biodatacatalyst", job_id) for job_id in ids]
        over = caller.status("biodatacatalyst", ids[0])
        bulk = caller.bulk([str(control.create_job("cgc")) for _ in range(5)])

    reset = str(math.ceil(clock.now + 300))
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    assert {(a.headers["X-RateLimit-Limit"], a.headers["X-RateLimit-Reset"]) for a in answers} == {
        ("3", reset)
    }
    assert over.status_code == 429 and over.json()["code"] == 1000
    assert over.headers["X-RateLimit-Reset"] == reset
    assert bulk.status_code == 200 and bulk.headers["X-RateLimit-Remaining"] == "2"


def test_rate_limits_can_be_disabled(
    start: Callable[..., RunningSimulator], http: requests.Session
) -> None:
    sim = start(cometly_limit="0", sbg_limit=None)
    caller = Caller(sim.url, http)
    with sim.client() as control:
        job_id = control.create_job("cometly", running_polls=100)
        answers = [caller.status("cometly", job_id) for _ in range(40)]
        bdc = caller.status("biodatacatalyst", control.create_job("biodatacatalyst"))

    assert {a.status_code for a in answers} == {200}
    assert "X-RateLimit-Remaining" not in bdc.headers


# -- CGC bulk, stats, control API, command line ---------------------------------------------------


def test_cgc_bulk_answers_in_request_order_with_an_error_item_for_unknown_ids(
    caller: Caller, control: SimulatorClient
) -> None:
    first, second = (str(i) for i in control.create_jobs([{"provider": "cgc"}] * 2))

    items = caller.bulk([second, "noSuchExport000", first]).json()["items"]

    assert [item.get("resource", {}).get("id") for item in items] == [second, None, first]
    assert items[1]["error"]["status"] == 404 and set(items[1]["error"]) == {
        "status",
        "code",
        "message",
        "more_info",
    }
    assert control.job("cgc", first)["polls"] == control.job("cgc", second)["polls"] == 1
    assert caller.bulk([]).status_code == 400


def test_stats_count_requests_and_answers_per_provider_and_credential(
    caller: Caller, control: SimulatorClient
) -> None:
    job_id = control.create_job("saymon", running_polls=10)
    caller.status("saymon", job_id)
    caller.status("saymon", job_id)
    caller.status("saymon", job_id, ("sim", "nope"))
    caller.status("cometly", 424242)

    stats = control.stats()
    control.reset()

    saymon = stats["providers"]["saymon"]
    assert stats["total"] == 4 and stats["jobs"] == 1
    assert saymon["statuses"] == {"200": 2, "401": 1}
    assert saymon["credentials"]["sim"]["requests"] == 2
    assert saymon["credentials"]["(unauthenticated)"]["statuses"] == {"401": 1}
    assert stats["providers"]["cometly"]["credentials"][TOKEN]["statuses"] == {"404": 1}
    assert control.stats()["total"] == 0
    with pytest.raises(SimulatorError):
        control.job("saymon", job_id)


def test_control_api_rejects_bad_specs_all_or_nothing(control: SimulatorClient) -> None:
    bad_specs: list[dict[str, Any]] = [
        {"provider": "nowhere"},
        {"provider": "saymon", "pending_pols": 1},
        {"provider": "saymon", "duration_s": 5, "running_polls": 1},
        {"provider": "cometly", "id": "abc"},
        {"provider": "saymon", "faults": [{"kind": "redirect", "polls": [1]}]},
        {"provider": "saymon", "faults": [{"kind": "503"}]},
    ]
    statuses = []
    for spec in bad_specs:
        with pytest.raises(SimulatorError) as refused:
            control.create_jobs([{"provider": "saymon", "id": "would-be-created"}, spec])
        statuses.append(refused.value.status)
    control.create_job("saymon", job_id="taken")
    with pytest.raises(SimulatorError) as duplicate:
        control.create_job("saymon", job_id="taken")

    assert statuses == [400] * len(bad_specs)
    assert duplicate.value.status == 409
    with pytest.raises(SimulatorError) as missing:
        control.job("saymon", "would-be-created")
    assert missing.value.status == 404
    assert control.create_jobs([{"provider": "cometly"}] * 3) == [1, 2, 3]


def test_unknown_routes_and_methods(sim: RunningSimulator, http: requests.Session) -> None:
    assert http.get(f"{sim.url}/nowhere").status_code == 404
    wrong = http.get(f"{sim.url}/bulkexport/status")
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")
    assert http.get(f"{sim.url}/_sim/reset").status_code == 405


def test_main_reports_bad_arguments_with_an_exit_status(tmp_path: Path) -> None:
    script = tmp_path / "jobs.json"
    script.write_text(json.dumps([{"provider": "saymon", "outcome": "maybe"}]))

    assert main(["--cometly-limit", "thirty"]) == 2
    assert main(["--script", str(script), "--port", "0"]) == 2
    assert main(["--no-such-option"]) == 2


def test_the_command_line_serves_a_script_until_terminated(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "jobs": [{"provider": "saymon", "id": "scripted", "running_polls": 0}],
                "faults": {"rate": 0},
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "export_poller.providers.simulator",
        "--port",
        "0",
        "--script",
        str(script),
    ]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[-1]
            with requests.Session() as session:
                job = session.get(f"{url}/_sim/jobs/saymon/scripted").json()
                answer = session.get(f"{url}/node/api/bulk/scripted/status", auth=BASIC).json()
        finally:
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=10)

    assert job["id"] == "scripted"
    assert answer == {"finished": False}
    assert status == 0


# -- poison ids and run-time limits ---------------------------------------------------------------


@pytest.mark.parametrize(("poison", "status"), [("400", 400), ("500", 500), ("garbage", 200)])
def test_a_poison_id_fails_every_cgc_bulk_request_that_names_it(
    poison: str, status: int, caller: Caller, control: SimulatorClient
) -> None:
    good = [str(i) for i in control.create_jobs([{"provider": "cgc"}] * 3)]
    bad = str(control.create_job("cgc", poison=poison))

    whole = caller.bulk([*good, bad])
    alone = caller.bulk([bad])
    neighbours = caller.bulk(good)

    assert whole.status_code == alone.status_code == status
    if poison == "garbage":
        with pytest.raises(ValueError):
            whole.json()
    else:
        assert set(whole.json()) == {"status", "code", "message", "more_info"}
    assert neighbours.status_code == 200 and len(neighbours.json()["items"]) == 3
    assert control.job("cgc", good[0])["answered"] == 1  # the failed requests moved nothing
    assert control.job("cgc", bad)["polls"] == 2
    with pytest.raises(SimulatorError):
        control.create_job("cometly", poison="400")


def test_limits_change_at_run_time_and_the_request_log_shows_what_a_429_asked(
    control: SimulatorClient, caller: Caller
) -> None:
    assert control.set_limit("saymon", "2/30")["saymon"] == "2/30"
    job_id = control.create_job("saymon", running_polls=10)
    answers = [caller.status("saymon", job_id) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert "X-RateLimit-Remaining" not in answers[0].headers  # this one states no budget
    log = control.requests("saymon")
    assert [entry["status"] for entry in log] == [200, 200, 429]
    assert log[2]["until"] == pytest.approx(log[2]["at"] + int(answers[2].headers["Retry-After"]))
    control.reset()
    assert "saymon" not in control.set_limit("cgc", "0") and control.requests() == []
