"""A small client for the control API, so tests and benchmarks do not hand-build its JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

JobId = str | int


class SimulatorError(RuntimeError):
    """The control API refused a call; `status` and the server's `error` text are kept."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"simulator answered {status}: {message}")
        self.status = status
        self.message = message


class SimulatorClient:
    """Raises `SimulatorError` with the server's reason, so a bad spec fails a test readably."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def create_job(
        self,
        provider: str,
        *,
        job_id: JobId | None = None,
        outcome: str = "completed",
        pending_polls: int | None = None,
        running_polls: int | None = None,
        duration_s: float | None = None,
        partitions: int | None = None,
        owner: str | None = None,
        faults: Sequence[Mapping[str, Any]] | None = None,
        poison: str | None = None,
    ) -> JobId:
        """Create one job; unset fields take the simulator's defaults (1 pending, 1 running).

        Returns the job's id: the given `job_id`, or one the simulator generated (an int for
        cometly).
        """
        optional: dict[str, Any] = {
            "id": job_id,
            "pending_polls": pending_polls,
            "running_polls": running_polls,
            "duration_s": duration_s,
            "partitions": partitions,
            "owner": owner,
            "faults": list(faults) if faults is not None else None,
            "poison": poison,
        }
        spec: dict[str, Any] = {"provider": provider, "outcome": outcome}
        spec.update({key: value for key, value in optional.items() if value is not None})
        created: JobId = self._call("POST", "/_sim/jobs", spec)["id"]
        return created

    def create_jobs(self, specs: Sequence[Mapping[str, Any]]) -> list[JobId]:
        """Create many jobs in one request, all or none."""
        ids: list[JobId] = self._call("POST", "/_sim/jobs/bulk", list(specs))["ids"]
        return ids

    def job(self, provider: str, job_id: JobId) -> dict[str, Any]:
        return self._call("GET", f"/_sim/jobs/{quote(provider)}/{quote(str(job_id), safe='')}")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")

    def set_limit(self, provider: str, limit: str) -> dict[str, Any]:
        """Per-credential limit of one provider, as `N/SECONDS` ("0" removes it)."""
        return self._call("POST", "/_sim/limits", {"provider": provider, "limit": limit})

    def requests(self, provider: str | None = None) -> list[dict[str, Any]]:
        """Every request the simulator answered (the most recent 50,000), oldest first."""
        query = f"?provider={quote(provider)}" if provider else ""
        found: list[dict[str, Any]] = self._call("GET", f"/_sim/requests{query}")["requests"]
        return found

    def set_faults(
        self,
        rate: float,
        kinds: Sequence[str] = ("503", "500", "garbage"),
        *,
        providers: Sequence[str] | None = None,
        retry_after: int = 1,
        delay_s: float = 1.0,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Fault every status request with probability `rate`; `rate=0` turns it off."""
        body: dict[str, Any] = {
            "rate": rate,
            "kinds": list(kinds),
            "retry_after": retry_after,
            "delay_s": delay_s,
        }
        if providers is not None:
            body["providers"] = list(providers)
        if seed is not None:
            body["seed"] = seed
        return self._call("POST", "/_sim/faults", body)

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self._session.request(
            method, self.base_url + path, json=body, timeout=self.timeout
        )
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise SimulatorError(response.status_code, f"unexpected answer {response.text[:200]!r}")
        if not response.ok:
            raise SimulatorError(response.status_code, str(payload.get("error", payload)))
        return payload
