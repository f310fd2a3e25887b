"""SAYMON bulk operations: `GET /node/api/bulk/{id}/status` with HTTP basic auth.

SAYMON only says whether an operation has finished; it has no failed state, so a finished
operation is `completed` and anything else is `running` until the engine's deadline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from requests.auth import AuthBase, HTTPBasicAuth

from export_poller.providers.base import (
    Provider,
    StatusRequest,
    path_segment,
    validate_answer,
)
from export_poller.providers.models import ExportStatus, Outcome


class _Answer(BaseModel):
    model_config = ConfigDict(strict=True)

    finished: bool


class Saymon(Provider):
    """One SAYMON installation; it is self-hosted, so `base_url` has no default."""

    name = "saymon"
    required_credentials = ("username", "password")

    def auth(self) -> AuthBase:
        return HTTPBasicAuth(self.require("username"), self.require("password"))

    def status_request(self, export_ids: Sequence[str]) -> StatusRequest:
        (export_id,) = export_ids
        return StatusRequest("GET", f"/node/api/bulk/{path_segment(export_id)}/status")

    def parse(self, body: Any, export_ids: Sequence[str]) -> dict[str, Outcome]:
        (export_id,) = export_ids
        answer = validate_answer(_Answer, body, self.name)
        return {
            export_id: ExportStatus(
                state="completed" if answer.finished else "running",
                result={"finished": answer.finished},
                raw=body,
            )
        }

    def describe_error(self, body: Any) -> str | None:
        """SAYMON wraps its error as a JSON string inside `message`; unwrap it when we can."""
        said = super().describe_error(body)
        if said is None:
            return None
        try:
            inner = json.loads(said)
        except ValueError:
            return said
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        return said
