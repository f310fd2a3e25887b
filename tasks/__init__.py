"""export-poller's Celery side: `celery -A tasks worker` and `celery -A tasks beat`.

from tasks import track_export, get_export, cancel_export
"""

from tasks.api import cancel_export, get_export, track_export
from tasks.app import app

__all__ = ["app", "cancel_export", "get_export", "track_export"]
