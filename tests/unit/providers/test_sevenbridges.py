"""Seven Bridges: BioData Catalyst's single GET, CGC's bulk POST, and their shared error bodies."""

from __future__ import annotations

import copy
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
import responses

from export_poller.config.settings import AccountSettings, Settings
from export_poller.providers import answer, errors
from export_poller.providers.models import ExportStatus, Outcome, StatusError
from export_poller.providers.sevenbridges import CGC, BioDataCatalyst
from tests.unit.providers.helpers import ACCOUNT, SECRETS, assert_no_secret, load, make

BDC = "https://api.sb.biodatacatalyst.nhlbi.nih.gov/v2/storage/exports"
CGC_URL = "https://cgc-api.sbgenomics.com/v2/bulk/storage/exports/get"
DONE = "crand0mKvetGpxIjo088DnMXEg0t6srX"
BROKEN = "yrand0mqLcnVaDEFYyM75zZ7M6rvTeZm"
SEED_IDS = ["gET2tre6CG411ac0SbNkaVA0SNRK4H9W", "YFyyZ7teCGtXjPPzjGGRJIIAmCd6Ol29"]
MIXED_IDS = [
    "pend1ngPENDINGpendingPENDINGpen01",
    "runn1ngRUNNINGrunningRUNNINGrun02",
    "gET2tre6CG411ac0SbNkaVA0SNRK4H9W",
    "fa1ledFAILEDfailedFAILEDfailed004",
    "gone404gone404gone404gone404gone5",
    "deny403deny403deny403deny403deny6",
]
NOW = 1_700_000_000.0


def _bdc(http: responses.RequestsMock, body: Any, export_id: str = DONE) -> ExportStatus:
    http.add(responses.GET, f"{BDC}/{export_id}", json=body)
    return make("biodatacatalyst").fetch(export_id)


def _cgc(http: responses.RequestsMock, body: Any, export_ids: list[str]) -> dict[str, Outcome]:
    http.add(responses.POST, CGC_URL, json=body)
    return make("cgc").fetch_many(export_ids)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the wall clock `retry_after_seconds` reads."""
    monkeypatch.setattr(answer, "time", SimpleNamespace(time=lambda: NOW))


# -- BioData Catalyst ------------------------------------------------------------------------


def _refuse_without_json_content_type(request: Any) -> tuple[int, dict[str, str], str]:
    """Seed 002 lists `Content-type: application/json` as required on the GET."""
    if request.headers.get("Content-Type") != "application/json":
        error = {"status": 400, "code": 9000, "message": "Bad request", "more_info": ""}
        return 400, {}, json.dumps(error)
    if request.method == "GET":
        return 200, {}, json.dumps(load("biodatacatalyst", "seed_completed"))
    return 200, {}, json.dumps(load("cgc", "seed_bulk_completed"))


@pytest.mark.parametrize("provider", ["biodatacatalyst", "cgc"])
def test_every_request_says_its_content_type(http: responses.RequestsMock, provider: str) -> None:
    http.add_callback(responses.GET, f"{BDC}/{DONE}", _refuse_without_json_content_type)
    http.add_callback(responses.POST, CGC_URL, _refuse_without_json_content_type)
    ids = [DONE] if provider == "biodatacatalyst" else SEED_IDS
    answers = make(provider).fetch_many(ids)
    assert [a.state for a in answers.values()] == ["completed"] * len(ids)  # type: ignore[union-attr]


def test_bdc_seed_completed(http: responses.RequestsMock) -> None:
    seed = load("biodatacatalyst", "seed_completed")
    status = _bdc(http, seed)
    assert status.state == "completed"
    assert status.error is None
    assert status.result == {
        "destination": {"volume": "rfranklin/output", "location": "output.vcf"},
        "source": {"file": "567890abc9b0307bc0414164"},
        "file": "567890abc9b0307bc0414164",
        "finished_on": "2016-06-15T19:17:41Z",
    }
    assert status.raw == seed


def test_bdc_seed_failed(http: responses.RequestsMock) -> None:
    status = _bdc(http, load("biodatacatalyst", "seed_failed"), BROKEN)
    assert status.state == "failed"
    message = "Location on volume already contains a file. Check the documentation."
    assert status.error == StatusError(code="9107", message=message)
    assert status.message == message
    assert status.result["finished_on"] == "2016-06-22T13:38:57Z"


@pytest.mark.parametrize("state", ["pending", "running"])
def test_bdc_recorded_unfinished_states(http: responses.RequestsMock, state: str) -> None:
    status = _bdc(http, load("biodatacatalyst", state))
    assert status.state == state
    assert "finished_on" not in status.result
    assert status.error is None


def test_bdc_top_level_file_wins(http: responses.RequestsMock) -> None:
    body = {**load("biodatacatalyst", "seed_completed"), "file": "top-level-file-id"}
    assert _bdc(http, body).result["file"] == "top-level-file-id"


def test_bdc_failed_without_error_object(http: responses.RequestsMock) -> None:
    body = {"id": DONE, "state": "FAILED"}
    status = _bdc(http, body)
    assert status.state == "failed"
    assert status.error is not None
    assert "biodatacatalyst" in status.error.message


def test_bdc_token_header_and_default_url(http: responses.RequestsMock) -> None:
    _bdc(http, load("biodatacatalyst", "seed_completed"))
    request = http.calls[0].request
    assert request.url == f"{BDC}/{DONE}"
    assert request.headers["X-SBG-Auth-Token"] == SECRETS["token"]
    assert "Authorization" not in request.headers


def test_other_platform_is_a_base_url(http: responses.RequestsMock) -> None:
    acct = AccountSettings(
        provider="biodatacatalyst", base_url="https://api.sbgenomics.com", token="t0ken-sbg"
    )
    settings = Settings(_env_file=None, accounts={"sbg": acct})  # type: ignore[call-arg]
    http.add(
        responses.GET,
        f"https://api.sbgenomics.com/v2/storage/exports/{DONE}",
        json=load("biodatacatalyst", "seed_completed"),
    )
    assert BioDataCatalyst("sbg", acct, settings).fetch(DONE).state == "completed"


@pytest.mark.parametrize(
    ("export_id", "encoded"), [("../../admin", "..%2F..%2Fadmin"), ("a/b", "a%2Fb")]
)
def test_bdc_id_is_one_encoded_segment(
    http: responses.RequestsMock, export_id: str, encoded: str
) -> None:
    body = {**load("biodatacatalyst", "seed_completed"), "id": export_id}
    http.add(responses.GET, f"{BDC}/{encoded}", json=body)
    make("biodatacatalyst").fetch(export_id)
    assert http.calls[0].request.url == f"{BDC}/{encoded}"


def test_bdc_answer_about_another_export_is_bad_response(http: responses.RequestsMock) -> None:
    with pytest.raises(errors.BadResponse, match="another export"):
        _bdc(http, load("biodatacatalyst", "seed_failed"), DONE)


@pytest.mark.parametrize(
    "change",
    [
        {"state": "ABORTED"},
        {"state": "completed"},
        {"state": None},
        {"state": 3},
        {"source": "volume"},
        {"destination": ["x"]},
        {"error": "it broke"},
        {"error": {"code": "9107", "message": "x"}},
        {"finished_on": 1466018261},
        {"id": 7},
    ],
)
def test_bdc_wrong_shapes_are_bad_response(
    http: responses.RequestsMock, change: dict[str, Any]
) -> None:
    body = {**load("biodatacatalyst", "seed_failed"), "id": DONE, **change}
    with pytest.raises(errors.BadResponse, match="biodatacatalyst answer is not the documented"):
        _bdc(http, body)


def test_bdc_missing_state_is_bad_response(http: responses.RequestsMock) -> None:
    body = load("biodatacatalyst", "seed_completed")
    del body["state"]
    with pytest.raises(errors.BadResponse, match="state"):
        _bdc(http, body)


# -- error bodies, both platforms ------------------------------------------------------------


def _error_call(http: responses.RequestsMock, name: str, status: int, body: Any, **kw: Any) -> None:
    if name == "cgc":
        http.add(responses.POST, CGC_URL, status=status, json=body, **kw)
        make("cgc").fetch_many(SEED_IDS)
    else:
        http.add(responses.GET, f"{BDC}/{DONE}", status=status, json=body, **kw)
        make(name).fetch(DONE)


@pytest.mark.parametrize("name", ["biodatacatalyst", "cgc"])
def test_503_with_code_0_is_maintenance(http: responses.RequestsMock, name: str) -> None:
    with pytest.raises(errors.Maintenance, match="maintenance") as caught:
        _error_call(http, name, 503, load(name, "error_503_maintenance"))
    assert caught.value.status_code == 503


@pytest.mark.parametrize("name", ["biodatacatalyst", "cgc"])
@pytest.mark.parametrize(
    "body", [{"status": 503, "code": 3, "message": "x"}, {"code": False}, {"code": "0"}, None]
)
def test_other_503_is_plain_server_error(
    http: responses.RequestsMock, name: str, body: Any
) -> None:
    with pytest.raises(errors.ServerError) as caught:
        _error_call(http, name, 503, body)
    assert not isinstance(caught.value, errors.Maintenance)


@pytest.mark.parametrize("name", ["biodatacatalyst", "cgc"])
def test_429_waits_until_rate_limit_reset(
    http: responses.RequestsMock, name: str, frozen_clock: None
) -> None:
    reset = {"X-RateLimit-Reset": str(int(NOW) + 42), "X-RateLimit-Remaining": "0"}
    with pytest.raises(errors.RateLimited) as caught:
        _error_call(http, name, 429, load(name, "error_429"), headers=reset)
    assert caught.value.retry_after == 42.0
    assert "(code 1000)" in caught.value.message


@pytest.mark.parametrize("name", ["biodatacatalyst", "cgc"])
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, errors.CredentialsRefused),
        (403, errors.CredentialsRefused),
        (404, errors.NotFound),
        (500, errors.ServerError),
    ],
)
def test_recorded_error_bodies(
    http: responses.RequestsMock, name: str, status: int, kind: type[errors.ProviderError]
) -> None:
    body = load(name, f"error_{status}")
    with pytest.raises(kind) as caught:
        _error_call(http, name, status, body)
    assert f"{body['message']} (code {body['code']})" in caught.value.message
    assert_no_secret(caught.value.message)
    if kind is errors.CredentialsRefused:
        assert repr(ACCOUNT) in caught.value.message


def test_error_echoing_the_token_is_redacted(http: responses.RequestsMock) -> None:
    body = {"status": 401, "code": 0, "message": f"Token {SECRETS['token']} is invalid"}
    with pytest.raises(errors.CredentialsRefused) as caught:
        _error_call(http, "biodatacatalyst", 401, body)
    assert "Token *** is invalid" in caught.value.message
    assert_no_secret(caught.value.message)


# -- CGC bulk ---------------------------------------------------------------------------------


def test_cgc_seed_bulk_in_one_request(http: responses.RequestsMock) -> None:
    seed = load("cgc", "seed_bulk_completed")
    outcomes = _cgc(http, seed, SEED_IDS)
    assert len(http.calls) == 1
    assert json.loads(http.calls[0].request.body) == {"export_ids": SEED_IDS}
    assert http.calls[0].request.headers["X-SBG-Auth-Token"] == SECRETS["token"]
    for export_id, item in zip(SEED_IDS, seed["items"], strict=True):
        status = outcomes[export_id]
        assert isinstance(status, ExportStatus)
        assert status.state == "completed"
        assert status.raw == item["resource"]
        resource = item["resource"]
        assert status.result == {
            "destination": resource["destination"],
            "source": resource["source"],
            "result": resource["result"],
            "finished_on": resource["finished_on"],
        }


def test_cgc_matches_items_by_id_not_order(http: responses.RequestsMock) -> None:
    seed = load("cgc", "seed_bulk_completed")
    seed["items"].reverse()
    outcomes = _cgc(http, seed, SEED_IDS)
    for export_id in SEED_IDS:
        status = outcomes[export_id]
        assert isinstance(status, ExportStatus)
        assert status.raw["id"] == export_id


def test_cgc_mixed_batch(http: responses.RequestsMock) -> None:
    outcomes = _cgc(http, load("cgc", "bulk_mixed"), MIXED_IDS)
    states = {i: o.state for i, o in outcomes.items() if isinstance(o, ExportStatus)}
    assert states == {
        MIXED_IDS[0]: "pending",
        MIXED_IDS[1]: "running",
        MIXED_IDS[2]: "completed",
        MIXED_IDS[3]: "failed",
    }
    failed = outcomes[MIXED_IDS[3]]
    assert isinstance(failed, ExportStatus)
    assert failed.error == StatusError(
        code="9107", message="Location on volume already contains a file."
    )
    assert isinstance(outcomes[MIXED_IDS[4]], errors.NotFound)
    assert isinstance(outcomes[MIXED_IDS[5]], errors.CredentialsRefused)
    assert repr(ACCOUNT) in str(outcomes[MIXED_IDS[5]])


def test_cgc_id_missing_from_answer(http: responses.RequestsMock) -> None:
    lost = "l0stl0stl0stl0stl0stl0stl0stl0st"
    outcomes = _cgc(http, load("cgc", "seed_bulk_completed"), [*SEED_IDS, lost])
    assert all(isinstance(outcomes[i], ExportStatus) for i in SEED_IDS)
    missing = outcomes[lost]
    assert isinstance(missing, errors.BadResponse)
    assert "no item" in missing.message and lost in missing.message


def test_cgc_error_item_out_of_order_is_not_guessed(http: responses.RequestsMock) -> None:
    seed = load("cgc", "seed_bulk_completed")
    body = {"items": [seed["items"][1], {"error": load("cgc", "error_404")}]}
    outcomes = _cgc(http, body, SEED_IDS)
    assert isinstance(outcomes[SEED_IDS[1]], ExportStatus)
    assert isinstance(outcomes[SEED_IDS[0]], errors.BadResponse)


def test_cgc_ignores_unrequested_and_duplicate_items(http: responses.RequestsMock) -> None:
    seed = load("cgc", "seed_bulk_completed")
    stray = copy.deepcopy(seed["items"][0])
    stray["resource"]["id"] = "str4ystr4ystr4ystr4ystr4ystr4yst"
    duplicate = copy.deepcopy(seed["items"][0])
    duplicate["resource"]["state"] = "FAILED"
    body = {"items": [seed["items"][0], stray, duplicate]}
    outcomes = _cgc(http, body, SEED_IDS[:1])
    assert list(outcomes) == SEED_IDS[:1]
    first = outcomes[SEED_IDS[0]]
    assert isinstance(first, ExportStatus) and first.state == "completed"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"status": 404, "code": 0, "message": "gone"}, errors.NotFound),
        ({"status": 401, "code": 0, "message": "who?"}, errors.CredentialsRefused),
        ({"status": 403, "code": 0, "message": "no"}, errors.CredentialsRefused),
        ({"status": 429, "code": 1000, "message": "slow down"}, errors.RateLimited),
        ({"status": 500, "code": 2, "message": "oops"}, errors.ServerError),
        ({"status": 503, "code": 0, "message": "maintenance"}, errors.Maintenance),
        ({"status": 409, "code": 9107, "message": "conflict"}, errors.Rejected),
        ({"status": 200, "code": 0, "message": "odd"}, errors.BadResponse),
        ({"code": 0, "message": "no status"}, errors.BadResponse),
    ],
)
def test_cgc_item_errors_map_like_http_errors(
    http: responses.RequestsMock, error: dict[str, Any], kind: type[errors.ProviderError]
) -> None:
    seed = load("cgc", "seed_bulk_completed")
    outcomes = _cgc(http, {"items": [seed["items"][0], {"error": error}]}, SEED_IDS)
    assert isinstance(outcomes[SEED_IDS[0]], ExportStatus)
    assert type(outcomes[SEED_IDS[1]]) is kind


@pytest.mark.parametrize(
    "item",
    [
        {"resource": {"id": SEED_IDS[1], "state": "ABORTED"}},
        {"resource": {"state": "COMPLETED"}},
        {"resource": "COMPLETED"},
        {"error": {"status": "404"}},
        {},
        "item",
        None,
    ],
)
def test_cgc_malformed_item_spoils_only_its_id(http: responses.RequestsMock, item: Any) -> None:
    seed = load("cgc", "seed_bulk_completed")
    outcomes = _cgc(http, {"items": [seed["items"][0], item]}, SEED_IDS)
    assert isinstance(outcomes[SEED_IDS[0]], ExportStatus)
    bad = outcomes[SEED_IDS[1]]
    assert isinstance(bad, errors.BadResponse)
    assert "cgc" in bad.message


@pytest.mark.parametrize("body", [{"items": {}}, {"items": None}, {"resource": {}}, []])
def test_cgc_answer_without_items_list_is_bad_response(
    http: responses.RequestsMock, body: Any
) -> None:
    with pytest.raises(errors.BadResponse, match="cgc answer is not the documented JSON"):
        _cgc(http, body, SEED_IDS)


@pytest.mark.parametrize("export_id", ["../../admin", "a/b"])
def test_cgc_ids_travel_in_the_body(http: responses.RequestsMock, export_id: str) -> None:
    _cgc(http, {"items": []}, [export_id])
    assert http.calls[0].request.url == CGC_URL
    assert json.loads(http.calls[0].request.body) == {"export_ids": [export_id]}


def test_cgc_batch_bounds() -> None:
    assert CGC.batch_size == 100
    assert BioDataCatalyst.batch_size == 1
    provider = make("cgc")
    assert len(provider.status_request([f"id{i}" for i in range(100)]).json["export_ids"]) == 100
    with pytest.raises(ValueError, match="1 to 100"):
        provider.status_request([])
    with pytest.raises(ValueError, match="1 to 100"):
        provider.status_request([f"id{i}" for i in range(101)])


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, "seed_bulk_completed", None),
        (500, "error_500", errors.ServerError),
        (429, "error_429", errors.RateLimited),
    ],
)
def test_the_budget_comes_back_on_the_answer_whatever_its_status(
    http: responses.RequestsMock, status: int, body: str, error: type[Exception] | None
) -> None:
    """The engine holds an account before its stated budget runs out, on a 5xx too: each
    answer carries the budget its own headers stated, from whichever thread asked."""
    headers = {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "7"}
    headers["X-RateLimit-Reset"] = str(int(time.time()) + 60)
    http.add(responses.POST, CGC_URL, status=status, json=load("cgc", body), headers=headers)
    answer = make("cgc").ask(SEED_IDS)
    assert answer.budget is not None and (answer.budget.limit, answer.budget.remaining) == (
        1000,
        7,
    )
    assert (answer.error is None) if error is None else isinstance(answer.error, error)
    assert set(answer.outcomes) == set(SEED_IDS)
    if answer.error is not None:  # every id's outcome is the request's failure, not raised
        assert all(o is answer.error for o in answer.outcomes.values())
