"""Settings for export-poller: one object, environment first, then an optional `.env` file."""

from export_poller.config.accounts import AccountSettings
from export_poller.config.settings import (
    InvalidSettings,
    Settings,
    get_settings,
    reset_settings,
)

__all__ = ["AccountSettings", "InvalidSettings", "Settings", "get_settings", "reset_settings"]
