"""`export-poller`: track, inspect and cancel exports; run the simulator or the demo.

A user mistake (unknown provider, unknown tracking id, Redis unreachable, a bad setting) is one
line on stderr and exit code 2, never a traceback. The commands live beside this module:

    track.py     track
    show.py      status, list, watch
    operate.py   cancel, redeliver, refresh
    roster.py    accounts  (what the live workers serve)
    run.py       simulate, metrics, demo   (and `health`, in export_poller.health)
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import kombu.exceptions
import redis

from export_poller.config.brokers import redact_text
from export_poller.config.settings import InvalidSettings
from export_poller.providers.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])


JSON_HELP = "Machine-readable output (JSON)."


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def user_errors(func: F) -> F:
    """Turn the errors a user can cause into one clear line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigurationError as exc:
            fail(str(exc))
        except InvalidSettings as exc:
            fail(str(exc))
        except redis.AuthenticationError:
            fail("Redis refused the password in POLLER_REDIS_URL")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            fail(f"Redis is unreachable ({type(exc).__name__}); check POLLER_REDIS_URL")
        except kombu.exceptions.OperationalError as exc:
            fail(f"the broker is unreachable: {redact_text(str(exc))}")
        except RuntimeError as exc:  # api.OperationFailed: right input, not possible now
            fail(str(exc), code=1)

    return wrapper  # type: ignore[return-value]


def emit(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text())


def resolve(tracking_id: str) -> str:
    from export_poller.api import resolve_id

    return resolve_id(tracking_id)


@click.group()
@click.version_option(package_name="export-poller")
def main() -> None:
    """Track long-running exports at third-party providers until they finish."""
    # Warnings meant for the user are printed by the commands; keep Python's last-resort
    # handler from printing the library's log lines a second time.
    logging.getLogger("export_poller").addHandler(logging.NullHandler())


# The commands, one module per kind: each registers itself on `main`.
from export_poller.cli import operate, roster, run, show, track  # noqa: E402, F401
from export_poller.health import health  # noqa: E402

main.add_command(health)
