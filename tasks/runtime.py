"""The process-wide engine, built once from settings and wired to the Celery app."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from functools import cache

import redis
from kombu import Connection, Producer
from kombu.pools import producers

from export_poller.account.guard import AccountGuard
from export_poller.celery import app, broker_conf
from export_poller.config.settings import get_settings
from export_poller.connect import redis_client as store_client
from export_poller.engine import Engine
from export_poller.outbox import fire_callback
from export_poller.store import Store

# Below this a countdown costs more (the worker's ETA timer) than the wait it buys.
_MIN_COUNTDOWN = 0.05


def _send_poll(account: str, pairs: Sequence[tuple[str, str]], countdown: float) -> None:
    (tracking_id, token), *more = pairs
    args = (tracking_id, token, [list(p) for p in more]) if more else (tracking_id, token)
    delay = countdown if countdown >= _MIN_COUNTDOWN else None
    if delay is not None and get_settings().broker_quorum_queues:
        # Celery delays natively on quorum queues, in whole seconds (it refuses a countdown
        # that truncates to 0): round up, never early.
        delay = math.ceil(delay)
    # What Flower shows: the first export and the train's length. Celery would otherwise
    # saferepr the whole train on every publish (a measurable share of a worker's CPU).
    shown = f"({tracking_id!r}, +{len(more)} more)" if more else f"({tracking_id!r},)"
    with confirmed_producer() as producer:
        app.send_task(
            "exports.poll",
            args=args,
            kwargs={"account": account},
            countdown=delay,
            producer=producer,
            argsrepr=shown,
            kwargsrepr=f"{{'account': {account!r}}}",
        )


@cache
def _confirming_connection() -> Connection | None:
    settings = get_settings()
    if settings.broker_kind != "amqp":
        return None
    return Connection(settings.broker, transport_options={"confirm_publish": True})


@contextlib.contextmanager
def confirmed_producer() -> Iterator[Producer | None]:
    """RabbitMQ: a producer whose publish returns once the broker has the message (publisher
    confirms), on a connection only this producer reads; None (Celery's own) on Redis.

    Not set for all of Celery's connections: a worker's event dispatcher, sharing its connection
    with the event loop, was seen waiting forever for a confirm under the thread pool, and
    with it every thread of the worker.
    """
    conn = _confirming_connection()
    if conn is None:
        yield None
        return
    with producers[conn].acquire(block=True) as producer:
        yield producer


@cache
def redis_client() -> redis.Redis:
    return store_client(get_settings(), health_check_interval=30)


@cache
def get_engine() -> Engine:
    settings = get_settings()
    store = Store(redis_client(), settings.key_prefix)
    guard = AccountGuard(settings, redis_client())
    return Engine(settings, store, _send_poll, fire_callback, guard=guard)


def reconfigure() -> None:
    """Re-read settings after the environment changed (the demo and the integration tests)."""
    from export_poller.config.settings import reset_settings

    reset_settings()
    get_engine.cache_clear()
    _confirming_connection.cache_clear()
    redis_client.cache_clear()
    settings = get_settings()
    app.conf.update(
        broker_url=settings.broker, task_default_queue=settings.queue, **broker_conf(settings)
    )
    # Celery has no public call to drop its broker pools; without this, messages would still
    # go to the broker this process first connected to.
    # (kombu keeps pools per broker URL in a global registry; closing them here would break
    # the next user of the same URL, so the references are only dropped.)
    setattr(app, "_pool", None)  # noqa: B010 - private to Celery, hence no attribute stub
    setattr(app.amqp, "_producer_pool", None)  # noqa: B010
    for cached in ("default_queue", "queues", "router"):  # built from task_default_queue
        app.amqp.__dict__.pop(cached, None)
