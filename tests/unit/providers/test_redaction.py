"""Echoed secrets and kombu markers never survive an adapter, whatever the provider sends."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import responses
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from export_poller.providers import errors
from export_poller.providers.redaction import ESCAPED, Redactor, secret_forms
from tests.unit.providers.helpers import (
    PROVIDERS,
    SAMPLE_IDS,
    SECRETS,
    USERNAME,
    account,
    make,
    method,
    ok_body,
    status_url,
)


def _forms() -> dict[str, str]:
    """Every spelling a provider might echo, named for the test ids."""
    token, password = SECRETS["token"], SECRETS["password"]
    basic = base64.b64encode(f"{USERNAME}:{password}".encode()).decode()
    return {
        "plain": token,
        "bearer": f"Bearer {token}",
        "base64": base64.b64encode(token.encode()).decode(),
        "basic-auth": f"Basic {basic}",
        "url-encoded": quote(SECRETS["secret_key"] + "/+=", safe=""),
        "url-encoded-plus": quote_plus(password + " x"),
    }


FORMS = _forms()


def _leaks(text: str) -> list[str]:
    every = {s for secret in SECRETS.values() for s in (secret, quote(secret, safe=""))}
    every |= {base64.b64encode(s.encode()).decode() for s in SECRETS.values()}
    every.add(base64.b64encode(f"{USERNAME}:{SECRETS['password']}".encode()).decode())
    return sorted(form for form in every if form in text)


def test_every_spelling_of_every_secret_is_a_form() -> None:
    forms = secret_forms(account("saymon"))
    assert SECRETS["token"] in forms
    assert quote(SECRETS["secret_key"], safe="") in forms
    assert base64.b64encode(f"{USERNAME}:{SECRETS['password']}".encode()).decode() in forms


def test_masking_covers_keys_nested_values_and_longest_first() -> None:
    redactor = Redactor(["abcd", "abcdef"])
    cleaned = redactor.clean({"x abcdef": [{"y": "say abcd and abcdef"}], "n": 3})
    assert cleaned == {"x ***": [{"y": "say *** and ***"}], "n": 3}


def _echoing(provider: str, said: str) -> dict[str, Any]:
    body = ok_body(provider)
    body = json.loads(json.dumps(body))
    body["echo"] = f"debug: you sent {said}"
    if provider == "cgc":  # a bulk answer keeps each item's resource
        body["items"][0]["resource"]["echo"] = said
    return body


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_2xx_answer_that_echoes_a_secret_is_masked(
    http: responses.RequestsMock, provider: str, form: str
) -> None:
    export_id = SAMPLE_IDS[provider]
    http.add(
        method(provider), status_url(provider, export_id), json=_echoing(provider, FORMS[form])
    )
    outcome = make(provider).fetch_many([export_id])[export_id]
    dumped = outcome.model_dump_json() if not isinstance(outcome, Exception) else str(outcome)
    assert _leaks(dumped) == []
    assert "***" in dumped


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_error_answer_that_echoes_the_auth_header_is_masked(
    http: responses.RequestsMock, provider: str, status: int
) -> None:
    export_id = SAMPLE_IDS[provider]
    echoed = f"bad header Authorization: {FORMS['basic-auth']} / {FORMS['bearer']}"
    body = {"status": status, "code": status, "message": echoed, "more_info": echoed}
    http.add(method(provider), status_url(provider, export_id), json=body, status=status)
    with pytest.raises(errors.ProviderError) as caught:
        make(provider).fetch(export_id)
    assert _leaks(str(caught.value)) == []


@pytest.mark.parametrize("kind", ["datetime", "evil", "bytes"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_kombu_shaped_field_still_decodes_through_kombu(
    http: responses.RequestsMock, provider: str, kind: str
) -> None:
    export_id = SAMPLE_IDS[provider]
    body = ok_body(provider)
    body = json.loads(json.dumps(body))
    marker = {"__type__": kind, "__value__": "not-a-date"}
    (body["items"][0]["resource"] if provider == "cgc" else body)["extra"] = marker
    http.add(method(provider), status_url(provider, export_id), json=body)
    outcome = make(provider).fetch_many([export_id])[export_id]
    assert not isinstance(outcome, Exception)
    payload = outcome.model_dump(mode="json")
    assert kombu_loads(kombu_dumps(payload)) == payload
    assert f'"{ESCAPED}": true' in json.dumps(payload)


def test_a_password_in_the_base_url_is_a_secret_too() -> None:
    acct = account("saymon", base_url="https://bot:url%2Fpass-9@saymon.example")
    forms = secret_forms(acct)
    assert "url/pass-9" in forms and "url%2Fpass-9" in forms
    provider = make("saymon", base_url="https://bot:url-pass-9@saymon.example")
    assert "url-pass-9" not in repr(provider)
