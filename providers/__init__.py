"""Provider adapters: each one builds a status request and parses the answer into an `ExportStatus`.

The shared HTTP flow (session, auth, timeouts, size cap, redirects, error mapping) lives in
`export_poller.providers.base`; a provider module only knows its own request and answer shapes.
"""

from export_poller.providers.base import Provider, StatusRequest
from export_poller.providers.errors import ProviderError
from export_poller.providers.models import ExportStatus, Progress, ProviderState
from export_poller.providers.registry import get_provider_class, provider_names

__all__ = [
    "ExportStatus",
    "Progress",
    "Provider",
    "ProviderError",
    "ProviderState",
    "StatusRequest",
    "get_provider_class",
    "provider_names",
]
