"""Verify AWS Signature Version 4 by recomputing it with the known secret, as S3 does.

ChaosSearch authenticates with SigV4 for service `s3`. A simulator that only checked for an
`Authorization` header would let a broken signer pass every test, so the signature is rebuilt
from the request as received (method, path, query, signed headers, payload hash) per the
published algorithm, using only hashlib/hmac. Verification only: nothing here signs requests.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, quote

from export_poller.providers.simulator.options import Clock
from export_poller.providers.simulator.wsgi import Request

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 15 * 60
REQUIRED_SIGNED = frozenset({"host", "x-amz-date", "x-amz-content-sha256"})
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*"
)
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")


class SignatureRejected(Exception):
    """Why S3 would answer 403; `code` is the S3 error code (SignatureDoesNotMatch, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Scope:
    access_key: str
    date: str
    region: str
    service: str

    @property
    def text(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@lru_cache(maxsize=256)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """Derived once per key and day, like real clients do; it is the costly part of a check."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


class SigV4Verifier:
    """Knows every configured key pair, so several ChaosSearch tenants can be simulated."""

    def __init__(
        self,
        keys: Mapping[str, str],
        region: str,
        service: str = "s3",
        clock: Clock = time.time,
    ) -> None:
        self._keys = dict(keys)
        self._region = region
        self._service = service
        self._clock = clock

    def verify(self, request: Request) -> str:
        """Return the access key that signed `request`, or raise `SignatureRejected`."""
        header = request.header("Authorization")
        if not header:
            raise SignatureRejected("MissingSecurityHeader", "no Authorization header")
        match = _AUTHORIZATION.fullmatch(header.strip())
        if match is None:
            raise SignatureRejected(
                "AuthorizationHeaderMalformed", "not an AWS4-HMAC-SHA256 header"
            )
        scope = self._scope(match["credential"])
        secret = self._keys.get(scope.access_key)
        if secret is None:
            raise SignatureRejected("InvalidAccessKeyId", "the access key is not known")
        signed = match["signed"].split(";")
        amz_date = self._checked_date(request, scope, signed)
        canonical = canonical_request(request, signed, self._payload_hash(request))
        to_sign = "\n".join(
            (ALGORITHM, amz_date, scope.text, hashlib.sha256(canonical.encode()).hexdigest())
        )
        key = _signing_key(secret, scope.date, scope.region, scope.service)
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, match["signature"]):
            raise SignatureRejected(
                "SignatureDoesNotMatch",
                "the request signature we calculated does not match the signature you provided",
            )
        return scope.access_key

    def _scope(self, credential: str) -> _Scope:
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise SignatureRejected("AuthorizationHeaderMalformed", "malformed Credential scope")
        scope = _Scope(*parts[:4])
        if (scope.region, scope.service) != (self._region, self._service):
            raise SignatureRejected(
                "AuthorizationHeaderMalformed",
                f"the scope must name region {self._region!r} and service {self._service!r}",
            )
        return scope

    def _checked_date(self, request: Request, scope: _Scope, signed: list[str]) -> str:
        missing = REQUIRED_SIGNED - set(signed)
        if missing or signed != sorted(set(signed)):
            raise SignatureRejected(
                "AccessDenied", f"SignedHeaders must be sorted and include {sorted(missing)}"
            )
        amz_date = request.header("X-Amz-Date") or ""
        signed_at = _epoch(amz_date)
        if amz_date[:8] != scope.date:
            raise SignatureRejected("SignatureDoesNotMatch", "X-Amz-Date is not the scope date")
        if abs(self._clock() - signed_at) > MAX_SKEW_S:
            raise SignatureRejected("RequestTimeTooSkewed", "X-Amz-Date is over 15 minutes off")
        return amz_date

    @staticmethod
    def _payload_hash(request: Request) -> str:
        declared = request.header("X-Amz-Content-Sha256") or ""
        if declared != hashlib.sha256(request.body).hexdigest():
            raise SignatureRejected(
                "XAmzContentSHA256Mismatch", "x-amz-content-sha256 does not match the body"
            )
        return declared


def _epoch(amz_date: str) -> int:
    """Parse `YYYYMMDDTHHMMSSZ`; `time.strptime` would cost more than the rest of a check."""
    match = _AMZ_DATE.fullmatch(amz_date)
    if match is None:
        raise SignatureRejected("AccessDenied", "X-Amz-Date is missing or malformed")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise SignatureRejected("AccessDenied", "X-Amz-Date is not a valid time")
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def canonical_request(request: Request, signed: list[str], payload_hash: str) -> str:
    """The SigV4 canonical request; S3 encodes the path once and does not normalize it."""
    headers = []
    for name in signed:
        value = request.header(name)
        if value is None:
            raise SignatureRejected("AccessDenied", f"signed header {name!r} is missing")
        headers.append(f"{name}:{' '.join(value.split())}\n")
    return "\n".join(
        (
            request.method,
            quote(request.path, safe="/~"),
            canonical_query(request.query),
            "".join(headers),
            ";".join(signed),
            payload_hash,
        )
    )


def canonical_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    encoded = sorted((quote(name, safe="-_.~"), quote(value, safe="-_.~")) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)
