"""SAYMON: basic auth, a boolean `finished`, and error messages wrapped as JSON strings."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import responses

from export_poller.config.settings import Settings
from export_poller.providers import errors
from export_poller.providers.models import ExportStatus
from export_poller.providers.saymon import Saymon
from tests.unit.providers.helpers import (
    ACCOUNT,
    SECRETS,
    USERNAME,
    account,
    assert_no_secret,
    load,
    make,
)

BASE = "https://saymon.acme.example/node/api/bulk"
EXPORT = "64f0c2e5a1b2c3d4e5f60718"


def _fetch(http: responses.RequestsMock, body: Any, export_id: str = EXPORT) -> ExportStatus:
    http.add(responses.GET, f"{BASE}/{export_id}/status", json=body)
    return make("saymon").fetch(export_id)


def test_seed_example_is_completed(http: responses.RequestsMock) -> None:
    status = _fetch(http, load("saymon", "seed_finished"))
    assert status.state == "completed"
    assert status.result == {"finished": True}
    assert status.raw == {"finished": True}
    assert status.error is None


def test_unfinished_is_running(http: responses.RequestsMock) -> None:
    status = _fetch(http, load("saymon", "running"))
    assert status.state == "running"
    assert status.result == {"finished": False}


def test_extra_fields_are_kept_in_raw_only(http: responses.RequestsMock) -> None:
    status = _fetch(http, {"finished": True, "progress": 100})
    assert status.result == {"finished": True}
    assert status.raw == {"finished": True, "progress": 100}


@pytest.mark.parametrize(
    "body",
    [{}, {"finished": "true"}, {"finished": 1}, {"finished": None}, {"done": True}, [True]],
)
def test_wrong_or_missing_finished_is_bad_response(http: responses.RequestsMock, body: Any) -> None:
    http.add(responses.GET, f"{BASE}/{EXPORT}/status", json=body)
    with pytest.raises(errors.BadResponse, match="saymon answer is not the documented JSON"):
        make("saymon").fetch(EXPORT)


def test_basic_auth_header(http: responses.RequestsMock) -> None:
    _fetch(http, load("saymon", "seed_finished"))
    expected = base64.b64encode(f"{USERNAME}:{SECRETS['password']}".encode()).decode()
    assert http.calls[0].request.headers["Authorization"] == f"Basic {expected}"


@pytest.mark.parametrize(
    ("export_id", "encoded"),
    [("../../admin", "..%2F..%2Fadmin"), ("a/b", "a%2Fb"), ("a b", "a%20b")],
)
def test_id_is_one_encoded_path_segment(
    http: responses.RequestsMock, export_id: str, encoded: str
) -> None:
    http.add(responses.GET, f"{BASE}/{encoded}/status", json={"finished": False})
    make("saymon").fetch(export_id)
    assert http.calls[0].request.url == f"{BASE}/{encoded}/status"


@pytest.mark.parametrize("export_id", [".", ".."])
def test_dot_segments_are_refused(export_id: str) -> None:
    with pytest.raises(errors.InvalidExportId):
        Saymon.validate_export_id(export_id)
    with pytest.raises(errors.InvalidExportId):
        make("saymon").status_request([export_id])


def test_401_unwraps_the_json_string_message(http: responses.RequestsMock) -> None:
    http.add(responses.GET, f"{BASE}/{EXPORT}/status", status=401, json=load("saymon", "error_401"))
    with pytest.raises(errors.CredentialsRefused) as caught:
        make("saymon").fetch(EXPORT)
    assert caught.value.message.endswith("(401): Unauthorized")
    assert repr(ACCOUNT) in caught.value.message
    assert_no_secret(caught.value.message)


@pytest.mark.parametrize(
    ("status", "kind", "said"),
    [
        (404, errors.NotFound, "Bulk operation not found"),
        (500, errors.ServerError, "Internal Server Error"),
    ],
)
def test_recorded_error_bodies(
    http: responses.RequestsMock, status: int, kind: type[errors.ProviderError], said: str
) -> None:
    body = load("saymon", f"error_{status}")
    http.add(responses.GET, f"{BASE}/{EXPORT}/status", status=status, json=body)
    with pytest.raises(kind) as caught:
        make("saymon").fetch(EXPORT)
    assert caught.value.message.endswith(f": {said}")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"message": '{"code":401,"message":"Unauthorized"}'}, "Unauthorized"),
        ({"message": '{"code":401}'}, '{"code":401}'),
        ({"message": '{"code":401,"message":7}'}, '{"code":401,"message":7}'),
        ({"message": '["Unauthorized"]'}, '["Unauthorized"]'),
        ({"message": "plain words"}, "plain words"),
        ({"message": "{not json"}, "{not json"),
        ({"message": 401}, None),
        ({"error": "x"}, None),
        ("Unauthorized", None),
        (None, None),
    ],
)
def test_describe_error(body: Any, said: str | None) -> None:
    assert make("saymon").describe_error(body) == said


@pytest.mark.parametrize("missing", ["username", "password", "base_url"])
def test_missing_setting_is_a_configuration_error(missing: str) -> None:
    acct = account("saymon", **{missing: None})
    settings = Settings(_env_file=None, accounts={ACCOUNT: acct})  # type: ignore[call-arg]
    with pytest.raises(errors.ConfigurationError, match=missing.upper()):
        Saymon(ACCOUNT, acct, settings)
