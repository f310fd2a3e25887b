"""The normalized status every adapter returns, whatever the provider calls its states."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from export_poller.providers import errors

ProviderState = Literal["pending", "running", "completed", "failed"]
TERMINAL_PROVIDER_STATES: frozenset[str] = frozenset({"completed", "failed"})


class Progress(BaseModel):
    """Units done out of units known (ChaosSearch partitions); lets the poller estimate a finish."""

    model_config = ConfigDict(frozen=True)

    completed: int = Field(ge=0)
    total: int = Field(ge=0)

    @property
    def fraction(self) -> float | None:
        return None if self.total <= 0 else min(1.0, self.completed / self.total)


class StatusError(BaseModel):
    """Why the provider says the export failed, in the provider's own words."""

    model_config = ConfigDict(frozen=True)

    code: str | None = None
    message: str


class ExportStatus(BaseModel):
    """One answer from a provider, normalized.

    `result` holds what the user needs next (a download URL and its expiry, file paths or file
    ids); `raw` keeps the provider's own answer for the final callback only.
    """

    model_config = ConfigDict(frozen=True)

    state: ProviderState
    progress: Progress | None = None
    message: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    error: StatusError | None = None
    raw: Any = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_PROVIDER_STATES

    def summary(self) -> dict[str, Any]:
        """Everything but `raw`: what a running record keeps, so Redis stays small per export."""
        return self.model_dump(mode="json", exclude={"raw"}, exclude_none=True)


Outcome = ExportStatus | errors.ProviderError
"""What one poll of one export comes to: the provider's status, or why there is none."""
