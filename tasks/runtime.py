"""The process-wide engine, built once from settings and wired to the Celery app."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any

import redis
from celery import signature

from export_poller.celery import app, broker_conf
from export_poller.config.settings import get_settings
from export_poller.connect import redis_client as store_client
from export_poller.engine import Engine
from export_poller.guards import AccountGuard
from export_poller.store import Store

# Below this a countdown costs more (the worker's ETA timer) than the wait it buys.
_MIN_COUNTDOWN = 0.05


def _send_poll(pairs: Sequence[tuple[str, str]], countdown: float) -> None:
    (tracking_id, token), *more = pairs
    args = (tracking_id, token, [list(p) for p in more]) if more else (tracking_id, token)
    delay = countdown if countdown >= _MIN_COUNTDOWN else None
    if delay is not None and get_settings().broker_quorum_queues:
        # Celery delays natively on quorum queues, in whole seconds (it refuses a countdown
        # that truncates to 0): round up, never early.
        delay = math.ceil(delay)
    app.send_task("exports.poll", args=args, countdown=delay)


def _send_callback(sig: dict[str, Any], record: dict[str, Any]) -> None:
    signature(sig, app=app).apply_async((record,))


@cache
def redis_client() -> redis.Redis:
    return store_client(get_settings(), health_check_interval=30)


@cache
def get_engine() -> Engine:
    settings = get_settings()
    store = Store(redis_client(), settings.key_prefix)
    guard = AccountGuard(settings, redis_client())
    return Engine(settings, store, _send_poll, _send_callback, guard=guard)


def reconfigure() -> None:
    """Re-read settings after the environment changed (the demo and the integration tests)."""
    from export_poller.config.settings import reset_settings

    reset_settings()
    get_engine.cache_clear()
    redis_client.cache_clear()
    app.conf.update(broker_url=get_settings().broker, **broker_conf(get_settings()))
    # Celery has no public call to drop its broker pools; without this, messages would still
    # go to the broker this process first connected to.
    # (kombu keeps pools per broker URL in a global registry; closing them here would break
    # the next user of the same URL, so the references are only dropped.)
    setattr(app, "_pool", None)  # noqa: B010 - private to Celery, hence no attribute stub
    setattr(app.amqp, "_producer_pool", None)  # noqa: B010
