"""A local HTTP server speaking the export-status APIs of the five supported providers.

Tests, the demo and benchmarks point provider accounts at it (one base URL serves all five):

    chaossearch      POST /bulkexport/status                 AWS SigV4 (service s3), verified
    saymon           GET  /node/api/bulk/{id}/status         HTTP basic auth
    biodatacatalyst  GET  /v2/storage/exports/{id}           X-SBG-Auth-Token, X-RateLimit-*
    cgc              POST /v2/bulk/storage/exports/get       X-SBG-Auth-Token, up to 100 ids
    cometly          GET  /public-api/v1/events/exports/{id} Bearer key, 30 requests/min

Jobs are created through the control API (`/_sim/...`, see
`export_poller.providers.simulator.control`) or a
`--script` file, advance by polls or by time, and can be made to fail in every way the poller
must survive (429, 5xx, garbage, slow, reset connections, 307s). `GET /_sim/stats` shows what
the poller did from the provider's side, including the busiest rate-limit window.

    from export_poller.providers.simulator import start_in_thread

    with start_in_thread(port=0) as sim:
        job_id = sim.client().create_job("cometly", pending_polls=1, running_polls=2)
        ...  # poll f"{sim.url}/public-api/v1/events/exports/{job_id}" with "Bearer sim-token"

The package depends on waitress only (SigV4 is verified with hashlib/hmac); `client` needs
requests.
"""

from export_poller.providers.simulator.app import SimulatorApp
from export_poller.providers.simulator.client import SimulatorClient, SimulatorError
from export_poller.providers.simulator.options import PROVIDERS, RateLimit, SimulatorOptions
from export_poller.providers.simulator.server import RunningSimulator, serve, start_in_thread

__all__ = [
    "PROVIDERS",
    "RateLimit",
    "RunningSimulator",
    "SimulatorApp",
    "SimulatorClient",
    "SimulatorError",
    "SimulatorOptions",
    "serve",
    "start_in_thread",
]
