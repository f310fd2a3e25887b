"""The Celery app: JSON only, late acks, and the sweep on beat.

Settings are read here, at import, so a worker or beat with a bad setting fails at start-up with
a message that names it, before it takes any work. What the broker needs (RabbitMQ: durable or
quorum queues, publisher confirms; Redis: a visibility timeout fitted to the work) is in
`broker_conf`, a function of the settings, so it is unit-tested without a broker.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from export_poller.config.settings import Settings, get_settings


def broker_conf(settings: Settings) -> dict[str, Any]:
    """Celery settings that depend on the broker kind."""
    if settings.broker_kind == "amqp":
        return _amqp_conf(settings)
    return _redis_conf(settings)


def _amqp_conf(settings: Settings) -> dict[str, Any]:
    """RabbitMQ: messages survive a broker restart (durable queue, persistent messages).

    A delivered message must be acked within the server's `consumer_timeout` (30 min by
    default) or RabbitMQ closes the channel. Nothing here is held that long: countdowns are at
    most `POLLER_ENQUEUE_HORIZON` (later polls wait in Redis), and a poll is bounded by its
    lease; settings refuse a `POLLER_BROKER_CONSUMER_TIMEOUT` that does not leave room for both.
    """
    queue, quorum = settings.queue, settings.broker_quorum_queues
    # Quorum queues cannot hold a countdown message in a worker under global QoS; Celery then
    # delays natively, through topic exchanges, so the queue's exchange is a topic one.
    exchange = Exchange(queue, type="topic" if quorum else "direct", durable=True)
    arguments = {"x-queue-type": "quorum"} if quorum else None
    return {
        "task_queues": [
            Queue(queue, exchange, routing_key=queue, durable=True, queue_arguments=arguments)
        ],
        "task_default_exchange": queue,
        "task_default_exchange_type": exchange.type,
        "task_default_routing_key": queue,
        "task_default_delivery_mode": "persistent",
        # Publisher confirms: on the producer that sends polls and callbacks (runtime.py), not
        # on every Celery connection (see `confirmed_producer`).
        "broker_heartbeat": 60,
    }


def _redis_conf(settings: Settings) -> dict[str, Any]:
    """Redis: a message a dead worker held comes back after the visibility timeout, checked
    every tenth of it (kombu's default checks every 100 s, and 1 h is its default timeout)."""
    options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout / 10))),
        "unacked_restore_throttle": 1,
    }
    if settings.redis_sentinel_master:
        options["master_name"] = settings.redis_sentinel_master
    return {"broker_transport_options": options}


class QuietRoutineTasks(logging.Filter):
    """Celery logs two INFO lines per task message ("received", "succeeded"). For poll and
    sweep messages, dozens a second per worker, they were most of a worker's log and about 1%
    of its CPU, and said nothing our own poll lines do not; they are kept when the logger is
    at DEBUG. Failures, and every other task's lines, are logged as before."""

    ROUTINE = frozenset({"exports.poll", "exports.sweep"})

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if record.levelno != logging.INFO or not isinstance(data, dict):
            return True
        if data.get("name") not in self.ROUTINE:
            return True
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


for _name in ("celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(QuietRoutineTasks())

settings = get_settings()

app = Celery("export_poller", broker=settings.broker, include=["export_poller.jobs"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    event_serializer="json",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    task_default_queue=settings.queue,
    # A worker takes no more messages than it has threads (countdown messages aside, which
    # Celery holds apart until due): a message it took waits in its pool's first-in,
    # first-out queue behind every other one it took, where the fair, bounded backlog in the
    # broker can no longer put a small account's poll ahead of a big one's.
    worker_prefetch_multiplier=1,
    # Task events cost a publish per task state (~15% of a worker's CPU at 200 ms answers, by
    # profile: bench/latency.py --profile); Flower turns them on in the workers it watches
    # (`enable_events`, Flower's default), so they are paid only while someone looks.
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    timezone="UTC",
    beat_schedule={
        "exports.sweep": {
            "task": "exports.sweep",
            "schedule": settings.sweep_interval,
            "options": {"expires": settings.sweep_interval * 2},
        }
    },
    **broker_conf(settings),
)
