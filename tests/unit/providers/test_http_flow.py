"""The shared HTTP flow, run against every adapter: the same failures must map the same way."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import responses

from export_poller.providers import errors
from export_poller.providers.models import ExportStatus
from tests.unit.providers.helpers import (
    ACCOUNT,
    AUTH_HEADERS,
    PROVIDERS,
    SAMPLE_IDS,
    assert_no_secret,
    make,
    method,
    ok_body,
    status_url,
)

pytestmark = pytest.mark.parametrize("name", PROVIDERS)


def _add(http: responses.RequestsMock, name: str, **kwargs: Any) -> None:
    http.add(method(name), status_url(name, SAMPLE_IDS[name]), **kwargs)


def test_documented_answer_parses(http: responses.RequestsMock, name: str) -> None:
    _add(http, name, json=ok_body(name))
    status = make(name).fetch(SAMPLE_IDS[name])
    assert isinstance(status, ExportStatus)
    assert http.calls[0].request.headers[AUTH_HEADERS[name]]


def test_proxy_and_ca_bundle_from_the_environment_still_apply(
    http: responses.RequestsMock, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("NO_PROXY", "no_proxy", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/corporate.pem")
    _add(http, name, json=ok_body(name))
    make(name).fetch(SAMPLE_IDS[name])
    sent = http.calls[0].request.req_kwargs
    assert set(sent["proxies"].values()) == {"http://proxy.internal:3128"}
    assert sent["verify"] == "/etc/ssl/certs/corporate.pem"


def test_a_cookie_the_provider_sets_is_neither_kept_nor_sent(
    http: responses.RequestsMock, name: str
) -> None:
    """Requests are copies of one prepared per account; a provider's session cookie must not
    ride along on them, nor pile up in the jar (a hostile provider could set one per answer)."""
    _add(http, name, json=ok_body(name), headers={"Set-Cookie": "sid=abc123; Path=/"})
    _add(http, name, json=ok_body(name))
    provider = make(name)
    provider.fetch(SAMPLE_IDS[name])
    provider.fetch(SAMPLE_IDS[name])
    assert [c.request.url for c in http.calls] == [status_url(name, SAMPLE_IDS[name])] * 2
    assert "Cookie" not in http.calls[1].request.headers
    assert http.calls[1].request.headers[AUTH_HEADERS[name]]
    assert len(provider.session.cookies) == 0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_server_error(http: responses.RequestsMock, name: str, status: int) -> None:
    _add(http, name, status=status, body="upstream trouble")
    with pytest.raises(errors.ServerError) as caught:
        make(name).fetch(SAMPLE_IDS[name])
    assert caught.value.status_code == status
    assert not isinstance(caught.value, errors.Maintenance)


def test_404_is_not_found(http: responses.RequestsMock, name: str) -> None:
    _add(http, name, status=404, json={"message": "no such export"})
    with pytest.raises(errors.NotFound, match="no such export"):
        make(name).fetch(SAMPLE_IDS[name])


@pytest.mark.parametrize("status", [401, 403])
def test_401_403_name_the_account_not_the_secret(
    http: responses.RequestsMock, name: str, status: int
) -> None:
    _add(http, name, status=status, json={"message": "bad credentials"})
    with pytest.raises(errors.CredentialsRefused) as caught:
        make(name).fetch(SAMPLE_IDS[name])
    assert repr(ACCOUNT) in caught.value.message
    assert_no_secret(str(caught.value))
    assert_no_secret(json.dumps(caught.value.as_dict()))


def test_other_4xx_is_rejected(http: responses.RequestsMock, name: str) -> None:
    _add(http, name, status=400, json={"message": "bad request"})
    with pytest.raises(errors.Rejected):
        make(name).fetch(SAMPLE_IDS[name])


def test_429_honours_retry_after(http: responses.RequestsMock, name: str) -> None:
    _add(http, name, status=429, headers={"Retry-After": "17"})
    with pytest.raises(errors.RateLimited) as caught:
        make(name).fetch(SAMPLE_IDS[name])
    assert caught.value.retry_after == 17.0


@pytest.mark.parametrize("body", ["<html>Bad gateway</html>", "", "{", "\x00\xff"])
def test_garbage_body_is_bad_response(http: responses.RequestsMock, name: str, body: str) -> None:
    _add(http, name, body=body)
    with pytest.raises(errors.BadResponse, match=name):
        make(name).fetch(SAMPLE_IDS[name])


@pytest.mark.parametrize("body", ["null", "[]", '"COMPLETED"', "42", "true", "{}"])
def test_non_object_or_empty_body_is_bad_response(
    http: responses.RequestsMock, name: str, body: str
) -> None:
    _add(http, name, body=body)
    with pytest.raises(errors.BadResponse, match=name):
        make(name).fetch(SAMPLE_IDS[name])


def test_redirect_to_another_host_is_refused_without_credentials(
    http: responses.RequestsMock, name: str
) -> None:
    _add(http, name, status=302, headers={"Location": "https://evil.example/collect"})
    http.add(responses.GET, "https://evil.example/collect", json=ok_body(name))
    http.add(responses.POST, "https://evil.example/collect", json=ok_body(name))
    with pytest.raises(errors.BadResponse, match="another host"):
        make(name).fetch(SAMPLE_IDS[name])
    assert [call.request.url for call in http.calls] == [status_url(name, SAMPLE_IDS[name])]


def test_same_host_redirect_is_followed_and_signed(http: responses.RequestsMock, name: str) -> None:
    moved = status_url(name, SAMPLE_IDS[name]) + "-v2"
    _add(http, name, status=307, headers={"Location": moved})
    http.add(method(name), moved, json=ok_body(name))
    assert isinstance(make(name).fetch(SAMPLE_IDS[name]), ExportStatus)
    assert http.calls[1].request.url == moved
    assert http.calls[1].request.headers[AUTH_HEADERS[name]]


def test_body_over_the_cap_is_bad_response(http: responses.RequestsMock, name: str) -> None:
    _add(http, name, json={**ok_body(name), "padding": "x" * 4096})
    with pytest.raises(errors.BadResponse, match="over 1024 bytes"):
        make(name, max_response_bytes=1024).fetch(SAMPLE_IDS[name])


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectTimeout("connect timed out"),
        requests.ReadTimeout("read timed out"),
        requests.ConnectionError("connection refused"),
    ],
)
def test_transport_failures(
    http: responses.RequestsMock, name: str, failure: requests.RequestException
) -> None:
    _add(http, name, body=failure)
    with pytest.raises(errors.TransportError, match=name):
        make(name).fetch(SAMPLE_IDS[name])
