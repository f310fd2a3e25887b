"""The Redis store: the truth about every tracked export (see keys.py for what lives where)."""

from export_poller.store.claims import Claim, Write
from export_poller.store.codec import DIGEST_CHARS, idem_digest
from export_poller.store.store import Store

__all__ = ["DIGEST_CHARS", "Claim", "Store", "Write", "idem_digest"]
