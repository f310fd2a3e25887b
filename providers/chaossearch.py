"""ChaosSearch bulk exports: `POST /bulkexport/status`, signed with AWS SigV4 for the "s3" service.

Only two `message` values are documented ("Running", "Success"). Anything else is read
conservatively: words of failure, or an ended query with failed partitions, mean `failed`;
otherwise the export is still `running` and the engine's deadline bounds how long we wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from requests.auth import AuthBase
from requests_aws4auth import AWS4Auth  # type: ignore[import-untyped]

from export_poller.providers.base import Provider, StatusRequest, validate_answer
from export_poller.providers.models import (
    ExportStatus,
    Outcome,
    Progress,
    ProviderState,
    StatusError,
)

_FAILURE_WORDS = ("fail", "error", "cancel")


class _Count(BaseModel):
    model_config = ConfigDict(strict=True)

    count: int = Field(ge=0)


class _Partitions(BaseModel):
    model_config = ConfigDict(strict=True)

    completed: _Count | None = None
    failed: _Count | None = None
    total: _Count | None = None


class _QueryStatus(BaseModel):
    model_config = ConfigDict(strict=True, populate_by_name=True)

    partitions: _Partitions | None = None
    query_completed: bool | None = Field(default=None, alias="queryCompleted")


class _Answer(BaseModel):
    """The fields we read; the rest (the search request, timings) is kept only in `raw`."""

    model_config = ConfigDict(strict=True, populate_by_name=True)

    message: str
    status: _QueryStatus | None = None
    exported_files_path: str | None = Field(default=None, alias="exportedFilesPath")
    total_files_exported: int | None = Field(default=None, alias="totalFilesExported", ge=0)


class ChaosSearch(Provider):
    """One ChaosSearch tenant; `base_url` is the tenant's own host, so there is no default."""

    name = "chaossearch"
    required_credentials = ("access_key", "secret_key", "region")

    def auth(self) -> AuthBase:
        # The region is part of the signature scope: a wrong one is refused with 403.
        signer: AuthBase = AWS4Auth(
            self.require("access_key"),
            self.require("secret_key"),
            self.require("region"),
            "s3",
        )
        return signer

    def status_request(self, export_ids: Sequence[str]) -> StatusRequest:
        (export_id,) = export_ids
        return StatusRequest("POST", "/bulkexport/status", {"id": export_id})

    def parse(self, body: Any, export_ids: Sequence[str]) -> dict[str, Outcome]:
        (export_id,) = export_ids
        answer = validate_answer(_Answer, body, self.name)
        state = _state(answer)
        return {
            export_id: ExportStatus(
                state=state,
                progress=_progress(answer.status),
                message=answer.message,
                result=_result(answer),
                error=_error(answer) if state == "failed" else None,
                raw=body,
            )
        }


def _failed_partitions(status: _QueryStatus | None) -> int:
    failed = status.partitions.failed if status and status.partitions else None
    return failed.count if failed else 0


def _state(answer: _Answer) -> ProviderState:
    said = answer.message.strip().lower()
    if said == "success":
        return "completed"
    if said == "running":
        return "running"
    if any(word in said for word in _FAILURE_WORDS):
        return "failed"
    ended = bool(answer.status and answer.status.query_completed)
    if ended and _failed_partitions(answer.status) > 0:
        return "failed"
    return "running"


def _progress(status: _QueryStatus | None) -> Progress | None:
    partitions = status.partitions if status else None
    if partitions is None or partitions.total is None or partitions.total.count <= 0:
        return None
    done = partitions.completed.count if partitions.completed else 0
    return Progress(completed=done, total=partitions.total.count)


def _result(answer: _Answer) -> dict[str, Any]:
    found = {
        "exportedFilesPath": answer.exported_files_path,
        "totalFilesExported": answer.total_files_exported,
    }
    return {key: value for key, value in found.items() if value is not None}


def _error(answer: _Answer) -> StatusError:
    failed = _failed_partitions(answer.status)
    suffix = f" ({failed} failed partitions)" if failed else ""
    return StatusError(message=f"{answer.message}{suffix}")
