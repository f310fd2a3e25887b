"""export-poller's Celery side: `celery -A tasks worker` and `celery -A tasks beat`.

    from tasks import track_export, get_export, cancel_export

Names are resolved on first use, so the CLI can check the environment and print a clear error
before settings are loaded, and `celery -A tasks` still finds `tasks.app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.api import cancel_export, get_export, track_export
    from tasks.celery import app

__all__ = ["app", "cancel_export", "get_export", "track_export"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from tasks.celery import app

        return app
    if name in ("track_export", "get_export", "cancel_export"):
        from tasks import api

        return getattr(api, name)
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
