"""Cometly: numeric ids, a bearer key, four states, and a download URL that expires."""

from __future__ import annotations

from typing import Any

import pytest
import responses

from export_poller.providers import errors
from export_poller.providers.cometly import Cometly
from export_poller.providers.models import ExportStatus, StatusError
from tests.unit.providers.helpers import ACCOUNT, SECRETS, assert_no_secret, load, make

BASE = "https://app.cometly.com/public-api/v1/events/exports"
WAIT = "Export is being processed. Please check back in a few minutes."


def _fetch(http: responses.RequestsMock, body: Any, export_id: str = "123") -> ExportStatus:
    http.add(responses.GET, f"{BASE}/{export_id}", json=body)
    return make("cometly").fetch(export_id)


@pytest.mark.parametrize(
    ("fixture", "state", "message"),
    [("seed_queued", "pending", WAIT), ("seed_processing", "running", WAIT)],
)
def test_seed_unfinished(
    http: responses.RequestsMock, fixture: str, state: str, message: str
) -> None:
    body = load("cometly", fixture)
    status = _fetch(http, body)
    assert status.state == state
    assert status.message == message
    assert status.result == {}
    assert status.error is None
    assert status.raw == body


def test_seed_completed_keeps_the_expiry(http: responses.RequestsMock) -> None:
    body = load("cometly", "seed_completed")
    status = _fetch(http, body)
    assert status.state == "completed"
    assert status.message is None
    assert status.result == {
        "download_url": body["download_url"],
        "expires_at": "2024-01-15T10:48:42Z",
        "completed_at": "2024-01-15T10:33:42Z",
    }
    assert status.raw == body


def test_seed_failed(http: responses.RequestsMock) -> None:
    status = _fetch(http, load("cometly", "seed_failed"))
    said = (
        "Export failed. Please try again in a few minutes. "
        "If the problem persists, contact support."
    )
    assert status.state == "failed"
    assert status.message == said
    assert status.error == StatusError(message=said)


def test_failed_without_message_still_explains(http: responses.RequestsMock) -> None:
    status = _fetch(http, {"export_id": 123, "status": "failed"})
    assert status.error is not None and status.error.message


def test_bearer_header_and_url(http: responses.RequestsMock) -> None:
    _fetch(http, load("cometly", "seed_queued"))
    request = http.calls[0].request
    assert request.url == f"{BASE}/123"
    assert request.headers["Authorization"] == f"Bearer {SECRETS['token']}"


@pytest.mark.parametrize("export_id", ["0", "123", "9" * 18])
def test_numeric_ids_are_accepted(export_id: str) -> None:
    assert Cometly.validate_export_id(export_id) == export_id


@pytest.mark.parametrize(
    "export_id", ["../../admin", "a/b", "12a", "-1", "1" * 19, "\uff11\uff12\uff13", " 12"]
)
def test_non_numeric_ids_are_refused(export_id: str) -> None:
    with pytest.raises(errors.InvalidExportId, match="cometly export ids must match"):
        Cometly.validate_export_id(export_id)


@pytest.mark.parametrize(
    ("export_id", "encoded"), [("../../admin", "..%2F..%2Fadmin"), ("a/b", "a%2Fb")]
)
def test_path_is_encoded_even_past_validation(
    http: responses.RequestsMock, export_id: str, encoded: str
) -> None:
    http.add(responses.GET, f"{BASE}/{encoded}", json={"status": "queued"})
    make("cometly").fetch(export_id)
    assert http.calls[0].request.url == f"{BASE}/{encoded}"


@pytest.mark.parametrize(("answer_id", "export_id"), [(123, "123"), ("123", "123"), (123, "0123")])
def test_same_export_in_another_spelling(
    http: responses.RequestsMock, answer_id: Any, export_id: str
) -> None:
    body = {**load("cometly", "seed_queued"), "export_id": answer_id}
    assert _fetch(http, body, export_id).state == "pending"


def test_answer_about_another_export_is_bad_response(http: responses.RequestsMock) -> None:
    with pytest.raises(errors.BadResponse, match="another export"):
        _fetch(http, load("cometly", "seed_queued"), "124")


def test_completed_without_download_url_is_bad_response(http: responses.RequestsMock) -> None:
    body = load("cometly", "seed_completed")
    del body["download_url"]
    with pytest.raises(errors.BadResponse, match="download_url"):
        _fetch(http, body)


@pytest.mark.parametrize(
    "change",
    [
        {"status": "cancelled"},
        {"status": "COMPLETED"},
        {"status": None},
        {"status": 2},
        {"export_id": True},
        {"export_id": 1.5},
        {"message": ["busy"]},
        {"download_url": 5},
        {"expires_at": 1705315722},
    ],
)
def test_wrong_shapes_are_bad_response(
    http: responses.RequestsMock, change: dict[str, Any]
) -> None:
    body = {**load("cometly", "seed_completed"), **change}
    with pytest.raises(errors.BadResponse, match="cometly answer is not the documented JSON"):
        _fetch(http, body)


def test_missing_status_is_bad_response(http: responses.RequestsMock) -> None:
    body = load("cometly", "seed_queued")
    del body["status"]
    with pytest.raises(errors.BadResponse, match="status"):
        _fetch(http, body)


def test_429_waits_retry_after_seconds(http: responses.RequestsMock) -> None:
    http.add(
        responses.GET,
        f"{BASE}/123",
        status=429,
        json=load("cometly", "error_429"),
        headers={"Retry-After": "30"},
    )
    with pytest.raises(errors.RateLimited, match="Too Many Attempts") as caught:
        make("cometly").fetch("123")
    assert caught.value.retry_after == 30.0


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
    http: responses.RequestsMock, status: int, kind: type[errors.ProviderError]
) -> None:
    body = load("cometly", f"error_{status}")
    http.add(responses.GET, f"{BASE}/123", status=status, json=body)
    with pytest.raises(kind) as caught:
        make("cometly").fetch("123")
    assert caught.value.message.endswith(body["message"])
    assert_no_secret(caught.value.message)
    if kind is errors.CredentialsRefused:
        assert repr(ACCOUNT) in caught.value.message


def test_default_base_url() -> None:
    assert make("cometly").base_url == "https://app.cometly.com"
