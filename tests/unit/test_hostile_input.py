"""Hostile input at `track_export`: refused with the documented error, and nothing stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from celery import signature

from export_poller import api
from export_poller.providers import errors
from tests.unit.conftest import Broker
from tests.unit.test_api import wired  # noqa: F401  (the fixture)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _track(**kwargs: Any) -> Callable[[], str]:
    return lambda: api.track_export("cometly", kwargs.pop("export_id", "123"), **kwargs)


REFUSED = {
    "callback-our-own-task": (_track(on_complete={"task": "exports.sweep"}), "reserved"),
    "callback-celery-task": (
        _track(on_failure=signature("celery.backend_cleanup")),
        "reserved",
    ),
    "callback-5mb": (
        _track(on_complete=signature("myapp.done", args=["x" * 5_000_000])),
        "bytes",
    ),
    "callback-link": (
        _track(on_complete={"task": "myapp.done", "options": {"link": {"task": "exports.poll"}}}),
        "may not set",
    ),
    "callback-pickle": (
        _track(on_complete={"task": "myapp.done", "options": {"serializer": "pickle"}}),
        "may not set",
    ),
    "callback-args-not-a-list": (
        _track(on_complete={"task": "myapp.done", "args": "abc"}),
        "args must be a list",
    ),
    "metadata-depth-40": (_track(metadata=_nested(40)), "deeper than 32"),
    "metadata-depth-990": (_track(metadata=_nested(990)), "JSON"),
    "metadata-kombu-marker": (
        _track(metadata={"when": {"__type__": "datetime", "__value__": "x"}}),
        "__type__",
    ),
    "timeout-huge-int": (_track(timeout=10**400), "timeout"),
    "timeout-nan": (_track(timeout=float("nan")), "timeout"),
    "id-lone-surrogate": (_track(export_id="12\ud8003"), "Unicode"),
    "id-c1-control": (_track(export_id="12\x853"), "control"),
    "id-bidi-override": (_track(export_id="12\u202e3"), "bidirectional"),
    "id-bidi-isolate": (_track(export_id="12\u20663"), "bidirectional"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_input_is_refused_with_a_configuration_error(
    wired: Broker,  # noqa: F811
    redis_client: fakeredis.FakeRedis,
    name: str,
) -> None:
    call, words = REFUSED[name]
    roster = sorted(redis_client.keys("*"))  # the live worker's heartbeat: all Redis holds
    with pytest.raises(errors.ConfigurationError, match=words):
        call()
    assert wired.messages == [] and sorted(redis_client.keys("*")) == roster
    assert all(b":fleet" in key for key in roster)


def test_metadata_32_deep_and_a_routed_callback_are_accepted(wired: Broker) -> None:  # noqa: F811
    sig = signature("myapp.done", queue="myapp", priority=3)
    assert api.track_export("cometly", "1", metadata=_nested(31), on_complete=sig)
