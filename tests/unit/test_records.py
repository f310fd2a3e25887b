"""A running record keeps every value within Redis's listpack limit (64 bytes by default): one
longer value turns the whole hash into a hash table, twice the memory per tracked export."""

from __future__ import annotations

import pytest

from export_poller.providers.models import ExportStatus
from export_poller.records import SHORT, error_fields, status_fields

COMETLY = "Export is being processed. Please check back in a few minutes."


@pytest.mark.parametrize(
    "message",
    [COMETLY + " Thank you for waiting.", "é" * 40, "状態" * 30, "x" * 65],
)
def test_a_long_message_is_cut_to_64_bytes_not_64_characters(message: str) -> None:
    fields = status_fields(ExportStatus(state="running", message=message), terminal=False)
    errors = error_fields({"kind": "server_error", "message": message}, terminal=False)
    for stored in (fields["message"], errors["error_message"]):
        assert len(stored.encode()) <= SHORT
        assert stored.endswith("…") and message.startswith(stored[:-1])
        assert len(stored.encode()) >= SHORT - 5  # cut at the limit, not far before it


def test_the_documented_cometly_message_is_kept_whole() -> None:
    fields = status_fields(ExportStatus(state="running", message=COMETLY), terminal=False)
    assert fields["message"] == COMETLY and len(COMETLY.encode()) == 62
