"""ChaosSearch: SigV4-signed POST, the documented and the undocumented `message` values."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
import responses

from export_poller.config.settings import Settings
from export_poller.providers import errors
from export_poller.providers.chaossearch import ChaosSearch
from export_poller.providers.models import ExportStatus, Progress, StatusError
from tests.unit.providers.helpers import (
    ACCOUNT,
    SECRETS,
    account,
    assert_no_secret,
    load,
    make,
)

URL = "https://acme.chaossearch.example/bulkexport/status"
EXPORT = "5b00d97d-133d-48e7-9e61-a8a98e4d0a38"


def _fetch(http: responses.RequestsMock, body: Any, export_id: str = EXPORT) -> ExportStatus:
    http.add(responses.POST, URL, json=body)
    return make("chaossearch").fetch(export_id)


def _parse(body: Any) -> ExportStatus:
    outcome = make("chaossearch").parse(body, [EXPORT])[EXPORT]
    assert isinstance(outcome, ExportStatus)
    return outcome


def _with(message: str, *, ended: bool, failed: int, done: int = 0, total: int = 0) -> Any:
    body = copy.deepcopy(load("chaossearch", "seed_running"))
    body["message"] = message
    body["status"]["queryCompleted"] = ended
    body["status"]["partitions"]["failed"]["count"] = failed
    body["status"]["partitions"]["completed"]["count"] = done
    body["status"]["partitions"]["total"]["count"] = total
    return body


def test_seed_example_is_running(http: responses.RequestsMock) -> None:
    seed = load("chaossearch", "seed_running")
    status = _fetch(http, seed)
    assert status.state == "running"
    assert status.message == "Running"
    assert status.progress is None  # total.count is 0: no estimate yet
    assert status.result == {
        "exportedFilesPath": "my-s3-export-bkt/exports/5b00d97d-133d-48e7-9e61-a8a98e4d0a38",
        "totalFilesExported": 0,
    }
    assert status.error is None
    assert status.raw == seed


@pytest.mark.parametrize(
    ("fixture", "state", "progress", "error"),
    [
        ("running_progress", "running", Progress(completed=3, total=8), None),
        ("success", "completed", Progress(completed=8, total=8), None),
        (
            "failed_message",
            "failed",
            Progress(completed=5, total=8),
            "Failed: query exceeded its time limit (3 failed partitions)",
        ),
        ("cancelled", "failed", Progress(completed=2, total=8), "Cancelled"),
        (
            "ended_failed_partitions",
            "failed",
            Progress(completed=5, total=8),
            "Finished (3 failed partitions)",
        ),
        ("unknown_message", "running", None, None),
    ],
)
def test_recorded_states(
    http: responses.RequestsMock,
    fixture: str,
    state: str,
    progress: Progress | None,
    error: str | None,
) -> None:
    body = load("chaossearch", fixture)
    status = _fetch(http, body)
    assert status.state == state
    assert status.progress == progress
    assert status.message == body["message"]
    assert status.error == (StatusError(message=error) if error else None)
    assert status.result["totalFilesExported"] == body["totalFilesExported"]


@pytest.mark.parametrize(
    ("message", "ended", "failed", "state"),
    [
        ("success", True, 0, "completed"),
        ("  SUCCESS ", True, 0, "completed"),
        ("Success", True, 2, "completed"),  # documented: trust it over the partition count
        ("running", False, 0, "running"),
        ("Running", True, 4, "running"),  # documented: partitions may still be retried
        ("Query ERROR in worker 3", False, 0, "failed"),
        ("Job failed", False, 0, "failed"),
        ("Canceled by user", True, 0, "failed"),
        ("CANCELLED", False, 0, "failed"),
        ("Finished", True, 1, "failed"),
        ("Finished", True, 0, "running"),
        ("Finishing", False, 5, "running"),
        ("", False, 0, "running"),
    ],
)
def test_message_mapping(message: str, ended: bool, failed: int, state: str) -> None:
    assert _parse(_with(message, ended=ended, failed=failed)).state == state


def test_progress_only_when_total_is_known() -> None:
    assert _parse(_with("Running", ended=False, failed=0, done=0, total=0)).progress is None
    assert _parse(_with("Running", ended=False, failed=0, done=2, total=4)).progress == Progress(
        completed=2, total=4
    )


def test_minimal_answer_is_enough() -> None:
    status = _parse({"message": "Success"})
    assert status.state == "completed"
    assert status.progress is None
    assert status.result == {}


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.pop("message"),
        lambda b: b.update(message=5),
        lambda b: b.update(message=None),
        lambda b: b.update(status="done"),
        lambda b: b["status"].update(queryCompleted="true"),
        lambda b: b["status"].update(partitions=[]),
        lambda b: b["status"]["partitions"]["total"].update(count="8"),
        lambda b: b["status"]["partitions"]["failed"].update(count=-1),
        lambda b: b["status"]["partitions"]["completed"].update(count=1.5),
        lambda b: b.update(totalFilesExported="3"),
        lambda b: b.update(exportedFilesPath=["a"]),
    ],
)
def test_wrong_types_are_bad_response(http: responses.RequestsMock, change: Any) -> None:
    body = copy.deepcopy(load("chaossearch", "seed_running"))
    change(body)
    with pytest.raises(errors.BadResponse, match="chaossearch answer is not the documented JSON"):
        _fetch(http, body)


def test_request_is_sigv4_signed_for_s3(http: responses.RequestsMock) -> None:
    _fetch(http, load("chaossearch", "seed_running"))
    request = http.calls[0].request
    authorization = request.headers["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 ")
    assert "/s3/aws4_request" in authorization
    assert f"Credential={SECRETS['access_key']}/" in authorization
    assert "/eu-west-1/s3/aws4_request" in authorization
    assert SECRETS["secret_key"] not in authorization
    assert request.headers["x-amz-date"]
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(request.body).hexdigest()
    assert json.loads(request.body) == {"id": EXPORT}
    assert request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("export_id", ["../../admin", "a/b"])
def test_id_travels_in_the_body_not_the_path(http: responses.RequestsMock, export_id: str) -> None:
    _fetch(http, load("chaossearch", "seed_running"), export_id)
    assert http.calls[0].request.url == URL
    assert json.loads(http.calls[0].request.body) == {"id": export_id}


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
    body = load("chaossearch", f"error_{status}")
    http.add(responses.POST, URL, status=status, json=body)
    with pytest.raises(kind) as caught:
        make("chaossearch").fetch(EXPORT)
    assert body["message"] in caught.value.message
    assert_no_secret(caught.value.message)
    if status in (401, 403):
        assert repr(ACCOUNT) in caught.value.message


@pytest.mark.parametrize("missing", ["region", "access_key", "secret_key", "base_url"])
def test_missing_setting_is_named_not_shown(missing: str) -> None:
    acct = account("chaossearch", **{missing: None})
    settings = Settings(_env_file=None, accounts={ACCOUNT: acct})  # type: ignore[call-arg]
    with pytest.raises(
        errors.ConfigurationError, match=f"POLLER_ACCOUNTS__ACME__{missing.upper()}"
    ):
        ChaosSearch(ACCOUNT, acct, settings)
