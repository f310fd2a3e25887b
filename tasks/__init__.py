"""export-poller's Celery side: `celery -A export_poller worker` and `celery -A export_poller beat`.

    from export_poller import track_export, get_export, cancel_export

Names are resolved on first use, so the CLI can check the environment and print a clear error
before settings are loaded, and `celery -A export_poller` still finds `export_poller.app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export_poller.api import cancel_export, get_export, track_export
    from export_poller.celery import app

__all__ = ["app", "cancel_export", "get_export", "track_export"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from export_poller.celery import app

        return app
    if name in ("track_export", "get_export", "cancel_export"):
        from export_poller import api

        return getattr(api, name)
    raise AttributeError(f"module 'export_poller' has no attribute {name!r}")
