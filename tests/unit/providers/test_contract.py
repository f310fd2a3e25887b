"""What every registered provider promises, whatever its API looks like.

Run over `provider_names()`, so a provider added to the registry is checked without a new test.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export_poller.config.settings import AccountSettings, Settings
from export_poller.providers import errors
from export_poller.providers.base import Provider
from export_poller.providers.models import ExportStatus
from export_poller.providers.registry import get_provider_class, provider_names
from tests.unit.providers.helpers import (
    ACCOUNT,
    FIXTURES,
    REGION,
    SAMPLE_IDS,
    SECRETS,
    USERNAME,
    assert_no_secret,
)

NAMES = provider_names()
STATUSES = [400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504]
CHECK = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


def build(name: str) -> Provider:
    """Every kind of credential set, so any of them leaking would show."""
    acct = AccountSettings(
        provider=name,
        base_url="https://provider.example",
        username=USERNAME,
        region=REGION,
        **SECRETS,  # type: ignore[arg-type]
    )
    full = Settings(_env_file=None, accounts={ACCOUNT: acct})  # type: ignore[call-arg]
    return get_provider_class(name)(ACCOUNT, acct, full)


def ids_for(name: str) -> list[str]:
    if name == "cgc":
        recorded = (json.loads(p.read_text()) for p in sorted((FIXTURES / "cgc").glob("*bulk*")))
        found = [i["resource"]["id"] for body in recorded for i in body["items"] if "resource" in i]
        return [*dict.fromkeys(found), "n0tInTheAnswer"]
    return [SAMPLE_IDS.get(name, "123")]


def like(template: Any) -> st.SearchStrategy[Any]:
    """Values shaped like `template`, any part of which may be dropped or swapped for junk."""
    if isinstance(template, dict):
        parts = {key: like(value) for key, value in template.items()}
        shaped = st.fixed_dictionaries(parts) | st.fixed_dictionaries({}, optional=parts)
    elif isinstance(template, list):
        elements = st.one_of(*(like(value) for value in template)) if template else json_values
        shaped = st.lists(elements, max_size=len(template) + 1)
    else:
        shaped = st.just(template)
    return st.integers(0, 7).flatmap(lambda roll: json_values if roll == 7 else shaped)


@cache
def shaped_answers(name: str) -> st.SearchStrategy[Any]:
    """Recorded answers (not error bodies) of this provider, with random parts."""
    folder = FIXTURES / name
    bodies = sorted(p for p in folder.glob("*.json") if not p.name.startswith("error_"))
    templates = [json.loads(p.read_text()) for p in bodies] or [{}]
    return st.one_of(*(like(template) for template in templates))


def check_parse(provider: Provider, body: Any, export_ids: list[str]) -> None:
    try:
        outcomes = provider.parse(body, export_ids)
    except errors.ProviderError as exc:
        assert_no_secret(str(exc))
        return
    assert isinstance(outcomes, dict)
    assert set(outcomes) == set(export_ids)
    for outcome in outcomes.values():
        assert isinstance(outcome, ExportStatus | errors.ProviderError)
        if isinstance(outcome, ExportStatus):
            json.dumps(outcome.summary())
        else:
            assert_no_secret(str(outcome))


@pytest.mark.parametrize("name", NAMES)
def test_name_matches_registry_key(name: str) -> None:
    assert get_provider_class(name).name == name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "export_id", ["", "   ", "x" * 1025, "é" * 513, "a\nb", "a\rb", "a\x00b", ".", "..", 123, None]
)
def test_bad_ids_are_refused(name: str, export_id: Any) -> None:
    with pytest.raises(errors.InvalidExportId):
        get_provider_class(name).validate_export_id(export_id)


@pytest.mark.parametrize("name", NAMES)
def test_plain_id_is_accepted(name: str) -> None:
    assert get_provider_class(name).validate_export_id("123") == "123"


@pytest.mark.parametrize("name", NAMES)
def test_repr_shows_no_secret(name: str) -> None:
    provider = build(name)
    assert ACCOUNT in repr(provider)
    assert_no_secret(repr(provider))
    assert_no_secret(str(provider))
    assert_no_secret(repr(provider.auth()))
    assert_no_secret(repr(provider.account))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("status", STATUSES)
def test_error_messages_show_no_secret(name: str, status: int) -> None:
    provider = build(name)
    echo = " ".join(SECRETS.values())
    bodies: list[Any] = [
        None,
        "plain text",
        {"message": "refused"},
        {"status": status, "code": 0, "message": f"bad credentials: {echo}", "more_info": ""},
        {"code": status, "message": json.dumps({"code": status, "message": echo})},
    ]
    for body in bodies:
        error = provider.error_for(status, {"Retry-After": "5"}, body)
        assert isinstance(error, errors.ProviderError)
        assert_no_secret(str(error))
        assert_no_secret(json.dumps(error.as_dict()))
        assert name in error.message
        if status in (401, 403):
            assert isinstance(error, errors.CredentialsRefused)
            assert repr(ACCOUNT) in error.message


@pytest.mark.parametrize("name", NAMES)
def test_parse_of_any_json_is_an_outcome_or_provider_error(name: str) -> None:
    provider, export_ids = build(name), ids_for(name)

    @CHECK
    @given(body=json_values)
    def check(body: Any) -> None:
        check_parse(provider, body, export_ids)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_parse_of_answer_shaped_json_is_an_outcome_or_provider_error(name: str) -> None:
    provider, export_ids = build(name), ids_for(name)

    @CHECK
    @given(body=shaped_answers(name))
    def check(body: Any) -> None:
        check_parse(provider, body, export_ids)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_recorded_answers_parse(name: str) -> None:
    """Every non-error fixture is a usable answer for at least one requested id."""
    provider, export_ids = build(name), ids_for(name)
    for path in sorted((FIXTURES / name).glob("*.json")):
        if path.name.startswith("error_"):
            continue
        body = json.loads(path.read_text())
        ids = _ids_in(name, body) or export_ids
        outcomes = provider.parse(body, ids)
        assert any(isinstance(o, ExportStatus) for o in outcomes.values()), path.name


def _ids_in(name: str, body: Any) -> list[str]:
    if name == "cgc":
        return [item["resource"]["id"] for item in body["items"] if "resource" in item]
    if name == "biodatacatalyst":
        return [body["id"]]
    return []
