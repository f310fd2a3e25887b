"""What may leave a provider's answer: no secret of ours, in any form, and no kombu marker.

Every decoded answer (2xx or error) passes through `Redactor.clean` before an adapter reads it,
so nothing derived from it (the record in Redis, `status --json`, logs, the callback payload,
Flower) can carry what the provider echoed:

* **Secrets.** Providers echo credentials: a token quoted in a message, a SAYMON 401 that
  repeats the `Authorization` header. Each configured secret is masked as itself (which covers
  `Bearer <token>`), URL-encoded (both ways), base64, and as the base64 `user:password` pair of
  basic auth.
* **kombu markers.** kombu's JSON decoder turns any object whose keys are exactly `__type__`
  and `__value__` into a typed value, and fails on a type it does not know; a provider field of
  that shape would make the callback message undecodable, so the callback would be lost. Such an
  object gets one more key, `__kombu_escaped__: true`, and then decodes as the plain dict it is.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from export_poller.config.accounts import AccountSettings

MASK = "***"
ESCAPED = "__kombu_escaped__"
KOMBU_KEYS = frozenset({"__type__", "__value__"})
_SECRET_FIELDS = ("token", "password", "access_key", "secret_key")
_MIN_SECRET = 4  # shorter "secrets" would mask ordinary words


def secret_forms(account: AccountSettings) -> set[str]:
    """Every spelling of the account's secrets that a provider could echo back."""
    secrets = [_plain(getattr(account, name)) for name in _SECRET_FIELDS]
    forms: set[str] = set()
    for secret in filter(None, secrets):
        forms |= _spellings(secret)
    url_password = urlsplit(account.base_url or "").password
    if url_password:  # https://user:password@host: requests sends it as basic auth
        forms |= _spellings(unquote(url_password)) | _spellings(url_password)
    if account.username and account.password is not None:
        pair = f"{account.username}:{account.password.get_secret_value()}"
        forms |= _encodings(pair)
    return {form for form in forms if len(form) >= _MIN_SECRET}


def _plain(value: Any) -> str:
    return "" if value is None else str(value.get_secret_value())


def _spellings(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote_plus(secret), *_encodings(secret)}


def _encodings(text: str) -> set[str]:
    raw = text.encode()
    padded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return padded | {form.rstrip("=") for form in padded}


class Redactor:
    """Masks a fixed set of secret spellings in strings and in decoded JSON."""

    def __init__(self, forms: Iterable[str]) -> None:
        ordered = sorted(set(forms), key=len, reverse=True)  # longest first: no half-masking
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    @classmethod
    def for_account(cls, account: AccountSettings) -> Redactor:
        return cls(secret_forms(account))

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern else value

    def clean(self, value: Any) -> Any:
        """The same JSON value with secrets masked (in keys too) and kombu markers escaped."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.clean(item) for item in value]
        if isinstance(value, dict):
            out = {self.text(str(k)): self.clean(v) for k, v in value.items()}
            if out.keys() == KOMBU_KEYS:
                out[ESCAPED] = True
            return out
        return value
