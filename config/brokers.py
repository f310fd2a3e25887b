"""Broker and store URLs: which schemes are accepted, what kind of broker a URL names, how to
print one without its password, and where a Sentinel URL's sentinels are.

Pure functions of their input (no connection is made here), so the checks run at settings load
and in unit tests alike. Error messages never repeat the URL: it may hold a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

_CREDENTIALS = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@", re.IGNORECASE)
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
AMQP_SCHEMES = ("amqp", "amqps")
BROKER_SCHEMES = REDIS_SCHEMES + AMQP_SCHEMES


def check_url(url: str, schemes: tuple[str, ...]) -> str:
    """Refuse an unknown scheme or a URL without a host, naming what is accepted."""
    parts = [urlsplit(one.strip()) for one in url.split(";")]
    allowed = ", ".join(f"{s}://" for s in schemes)
    for part in parts:
        if part.scheme not in schemes:
            raise ValueError(f"must be a {allowed} URL")
        if part.scheme != "unix" and not part.hostname:
            raise ValueError(f"{part.scheme}:// URL has no host")
        if len(parts) > 1 and part.scheme != "sentinel":
            raise ValueError("only sentinel:// URLs may list several hosts (separated by ';')")
    try:
        for part in parts:
            _ = part.port  # a port that is not a number raises here
    except ValueError:
        raise ValueError("the port is not a number") from None
    return url.strip()


def kind(url: str) -> str:
    """`amqp` for RabbitMQ, `redis` for Redis (plain, TLS, socket or Sentinel)."""
    return "amqp" if urlsplit(url).scheme in AMQP_SCHEMES else "redis"


def check_hold(held: float, broker_kind: str, limit: float) -> None:
    """The broker must not take a message back while a live worker may still hold it."""
    if held < limit:
        return
    name = "POLLER_VISIBILITY_TIMEOUT"
    if broker_kind == "amqp":
        name = "POLLER_BROKER_CONSUMER_TIMEOUT"
    raise ValueError(
        f"{name} ({limit:g}s) must exceed POLLER_ENQUEUE_HORIZON + POLLER_LEASE_SECONDS "
        f"({held:g}s): the longest a worker holds a message before acking it"
    )


def redact_url(url: str) -> str:
    """Hide the password of every URL in `url` (several, for Sentinel) before printing it."""
    return ";".join(_redact_one(one) for one in url.split(";"))


def redact_text(text: str) -> str:
    """Hide the password of any URL inside free text (an exception message, a log line)."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}***@", text)


def _redact_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@dataclass(frozen=True)
class SentinelTarget:
    """Where the sentinels are and how to reach the master they name."""

    hosts: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def parse_sentinel(url: str) -> SentinelTarget:
    """`sentinel://[user:pass@]host[:port][;sentinel://host2[:port]...][/db]`, kombu's form.

    The credentials are the master's (and the sentinels', if they ask for any); the port
    defaults to 26379; the database is read from the first URL that names one.
    """
    hosts: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for one in check_url(url, ("sentinel",)).split(";"):
        parts = urlsplit(one.strip())
        hosts.append((parts.hostname or "", parts.port or 26379))
        username = username or (unquote(parts.username) if parts.username else None)
        password = password or (unquote(parts.password) if parts.password else None)
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError("the database in a sentinel:// URL must be a number")
            db = int(path)
    return SentinelTarget(tuple(hosts), db, username, password)
