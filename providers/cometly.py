"""Cometly event exports: `GET /public-api/v1/events/exports/{id}` with a bearer API key.

A completed export carries a presigned download URL that expires 15 minutes after the request,
so `expires_at` travels with it: the callback's receiver must know how long the URL is good for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from requests import PreparedRequest
from requests.auth import AuthBase

from export_poller.providers import errors
from export_poller.providers.base import (
    Provider,
    StatusRequest,
    path_segment,
    validate_answer,
)
from export_poller.providers.models import ExportStatus, Outcome, ProviderState, StatusError

_STATES: dict[str, ProviderState] = {
    "queued": "pending",
    "processing": "running",
    "completed": "completed",
    "failed": "failed",
}


class BearerAuth(AuthBase):
    """Adds the API key per request; its repr never shows the key."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "<BearerAuth ***>"


class _Answer(BaseModel):
    model_config = ConfigDict(strict=True)

    export_id: int | str | None = None
    status: Literal["queued", "processing", "completed", "failed"]
    message: str | None = None
    created_at: str | None = None
    completed_at: str | None = None
    download_url: str | None = None
    expires_at: str | None = None


class Cometly(Provider):
    """One Cometly space (the API key is per space; other spaces' exports answer 404)."""

    name = "cometly"
    default_base_url = "https://app.cometly.com"
    id_pattern = re.compile(r"[0-9]{1,18}")
    required_credentials = ("token",)

    def auth(self) -> AuthBase:
        return BearerAuth(self.require("token"))

    def status_request(self, export_ids: Sequence[str]) -> StatusRequest:
        (export_id,) = export_ids
        return StatusRequest("GET", f"/public-api/v1/events/exports/{path_segment(export_id)}")

    def parse(self, body: Any, export_ids: Sequence[str]) -> dict[str, Outcome]:
        (export_id,) = export_ids
        answer = validate_answer(_Answer, body, self.name)
        self._check(answer, export_id)
        state = _STATES[answer.status]
        failure = answer.message or "Cometly reported the export as failed"
        return {
            export_id: ExportStatus(
                state=state,
                message=answer.message,
                result=_result(answer),
                error=StatusError(message=failure) if state == "failed" else None,
                raw=body,
            )
        }

    def _check(self, answer: _Answer, export_id: str) -> None:
        """Refuse an answer about another export or a completion we could not hand on."""
        if answer.export_id is not None and _number(answer.export_id) != _number(export_id):
            raise errors.BadResponse(
                f"{self.name} answered about another export than {export_id!r}"
            )
        if answer.status == "completed" and not answer.download_url:
            raise errors.BadResponse(f"{self.name} says completed but gives no download_url")


def _number(export_id: int | str) -> str:
    """Compare ids as numbers: `0123`, `"123"` and `123` are the same export."""
    text = str(export_id)
    return (text.lstrip("0") or "0") if text.isascii() and text.isdigit() else text


def _result(answer: _Answer) -> dict[str, Any]:
    found = {
        "download_url": answer.download_url,
        "expires_at": answer.expires_at,
        "completed_at": answer.completed_at,
    }
    return {key: value for key, value in found.items() if value is not None}
