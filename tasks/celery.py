"""The Celery app: JSON only, late acks, and the sweep on beat.

Settings are read here, at import, so a worker or beat with a bad setting fails at start-up with
a message that names it, before it takes any work.
"""

from __future__ import annotations

from celery import Celery

from export_poller.config.settings import get_settings

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
    worker_prefetch_multiplier=8,
    # Task events cost a publish per task state (~15% of a worker's CPU at 200 ms answers, by
    # profile: bench/latency.py --profile); Flower turns them on in the workers it watches
    # (`enable_events`, Flower's default), so they are paid only while someone looks.
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    # A message a dead worker held (a callback, a track) comes back after this long; lost
    # polls do not wait for it, the sweep rescues them.
    broker_transport_options={"visibility_timeout": settings.visibility_timeout},
    timezone="UTC",
    beat_schedule={
        "exports.sweep": {
            "task": "exports.sweep",
            "schedule": settings.sweep_interval,
            "options": {"expires": settings.sweep_interval * 2},
        }
    },
)
