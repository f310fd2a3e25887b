"""Seven Bridges platforms (BioData Catalyst, CGC, and any other one by `base_url`).

All of them share the export job shape, the `X-SBG-Auth-Token` header and the error body
`{status, code, message, more_info}`; they differ only in how jobs are asked for. BioData Catalyst
uses the single `GET /v2/storage/exports/{id}`; CGC uses the bulk `POST .../exports/get`, which
answers one item per id, each either a job or that id's own error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

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
    "PENDING": "pending",
    "RUNNING": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
}
_MAINTENANCE_CODE = 0
_RATE_LIMIT_CODE = 1000


class SevenBridgesAuth(AuthBase):
    """Adds the platform token per request; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        request.headers["X-SBG-Auth-Token"] = self._token
        return request

    def __repr__(self) -> str:
        return "<SevenBridgesAuth ***>"


class _ApiError(BaseModel):
    model_config = ConfigDict(strict=True)

    status: int | None = None
    code: int | None = None
    message: str | None = None
    more_info: str | None = None


class _Job(BaseModel):
    model_config = ConfigDict(strict=True)

    id: str | None = None
    state: Literal["PENDING", "RUNNING", "COMPLETED", "FAILED"]
    source: dict[str, Any] | None = None
    destination: dict[str, Any] | None = None
    file: str | None = None
    result: dict[str, Any] | None = None
    error: _ApiError | None = None
    finished_on: str | None = None


class _Item(BaseModel):
    model_config = ConfigDict(strict=True)

    resource: _Job | None = None
    error: _ApiError | None = None


class _Bulk(BaseModel):
    """Items are checked one by one, so one malformed item spoils only its own id."""

    model_config = ConfigDict(strict=True)

    items: list[Any]


class SevenBridges(Provider):
    """What every Seven Bridges platform shares: auth, job reading, error bodies."""

    required_credentials = ("token",)
    # The API documents list it as required on every request, a GET without a body included
    # (the vendor's own client, sevenbridges-python, sends it on every request too).
    headers: ClassVar[Mapping[str, str]] = {"Content-Type": "application/json"}

    def auth(self) -> AuthBase:
        return SevenBridgesAuth(self.require("token"))

    def describe_error(self, body: Any) -> str | None:
        said = super().describe_error(body)
        code = body.get("code") if isinstance(body, Mapping) else None
        if said is not None and type(code) is int:
            return f"{said} (code {code})"
        return said

    def error_for(self, status: int, headers: Mapping[str, str], body: Any) -> errors.ProviderError:
        """A 503 whose body code is 0 is planned maintenance, not an outage; code 1000 is the
        token's rate limit, so it holds the account like any 429."""
        code = body.get("code") if isinstance(body, Mapping) else None
        if status != 429 and type(code) is int and code == _RATE_LIMIT_CODE:
            return super().error_for(429, headers, body)  # the account's budget, whatever status
        if status == 503 and type(code) is int and code == _MAINTENANCE_CODE:
            said = self.describe_error(body)
            detail = f": {self.redact(said)}" if said else ""
            return errors.Maintenance(f"{self.name} is in maintenance{detail}", status_code=503)
        return super().error_for(status, headers, body)

    def job_status(self, job: _Job, raw: Any) -> ExportStatus:
        state = _STATES[job.state]
        error = self._job_error(job) if state == "failed" else None
        return ExportStatus(
            state=state,
            message=error.message if error else None,
            result=_result(job),
            error=error,
            raw=raw,
        )

    def _job_error(self, job: _Job) -> StatusError:
        if job.error is None:
            return StatusError(message=f"{self.name} reported the export as FAILED, with no error")
        code = str(job.error.code) if job.error.code is not None else None
        message = job.error.message or f"{self.name} reported the export as FAILED"
        return StatusError(code=code, message=message)


class BioDataCatalyst(SevenBridges):
    """NHLBI BioData Catalyst: one GET per export."""

    name = "biodatacatalyst"
    default_base_url = "https://api.sb.biodatacatalyst.nhlbi.nih.gov"

    def status_request(self, export_ids: Sequence[str]) -> StatusRequest:
        (export_id,) = export_ids
        return StatusRequest("GET", f"/v2/storage/exports/{path_segment(export_id)}")

    def parse(self, body: Any, export_ids: Sequence[str]) -> dict[str, Outcome]:
        (export_id,) = export_ids
        job = validate_answer(_Job, body, self.name)
        if job.id is not None and job.id != export_id:
            raise errors.BadResponse(
                f"{self.name} answered about another export than {export_id!r}"
            )
        return {export_id: self.job_status(job, body)}


class CGC(SevenBridges):
    """Cancer Genomics Cloud: up to 100 exports per bulk request."""

    name = "cgc"
    default_base_url = "https://cgc-api.sbgenomics.com"
    batch_size = 100

    def status_request(self, export_ids: Sequence[str]) -> StatusRequest:
        if not 0 < len(export_ids) <= self.batch_size:
            raise ValueError(f"{self.name} takes 1 to {self.batch_size} ids per request")
        return StatusRequest("POST", "/v2/bulk/storage/exports/get", {"export_ids": [*export_ids]})

    def parse(self, body: Any, export_ids: Sequence[str]) -> dict[str, Outcome]:
        bulk = validate_answer(_Bulk, body, self.name)
        items = [self._item(raw) for raw in bulk.items]
        ordered = _in_request_order(items, export_ids)
        wanted = set(export_ids)
        outcomes: dict[str, Outcome] = {}
        for index, (item_id, outcome) in enumerate(items):
            key = export_ids[index] if item_id is None and ordered else item_id
            if key in wanted and key not in outcomes:
                outcomes[key] = outcome
        for export_id in wanted - outcomes.keys():
            outcomes[export_id] = errors.BadResponse(
                f"{self.name} answer has no item for export {export_id!r}"
            )
        return outcomes

    def _item(self, raw: Any) -> tuple[str | None, Outcome]:
        """One item as (its job id when it names one, its outcome)."""
        try:
            item = validate_answer(_Item, raw, f"{self.name} item")
        except errors.BadResponse as exc:
            return None, exc
        if item.resource is not None:
            if item.resource.id is None:
                return None, errors.BadResponse(f"{self.name} item has a job without an id")
            return item.resource.id, self.job_status(item.resource, raw["resource"])
        if item.error is not None:
            return None, self._item_error(item.error, raw["error"])
        return None, errors.BadResponse(f"{self.name} item has neither resource nor error")

    def _item_error(self, error: _ApiError, raw: Any) -> errors.ProviderError:
        if error.status is None:
            return errors.BadResponse(f"{self.name} item error has no HTTP status")
        return self.error_for(error.status, {}, raw)


def _in_request_order(items: list[tuple[str | None, Outcome]], export_ids: Sequence[str]) -> bool:
    """Error items carry no id: pair them by position only if every named job sits in place."""
    if len(items) != len(export_ids):
        return False
    return all(item_id in (None, export_ids[i]) for i, (item_id, _) in enumerate(items))


def _result(job: _Job) -> dict[str, Any]:
    source_file = job.source.get("file") if job.source else None
    found = {
        "destination": job.destination,
        "source": job.source,
        "result": job.result,
        "file": job.file or (source_file if isinstance(source_file, str) else None),
        "finished_on": job.finished_on,
    }
    return {key: value for key, value in found.items() if value is not None}
