"""Broker and store URLs as a user writes them: accepted, refused with a clear reason, redacted."""

from __future__ import annotations

import pytest

from export_poller.celery import broker_conf
from export_poller.config.brokers import parse_sentinel, redact_url
from export_poller.config.settings import InvalidSettings, Settings, get_settings, reset_settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:5672//",
        "amqps://user:pw@rabbit.example.com:5671/prod",
        "redis://127.0.0.1:6379/1",
        "rediss://default:pw@redis.example.com:6380/0?ssl_cert_reqs=required",
        "unix:///run/redis.sock",
    ],
)
def test_broker_urls_users_write_are_accepted(url: str) -> None:
    assert settings(broker_url=url).broker == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("kafka://broker:9092", "must be a redis://"),
        ("amqp://", "has no host"),
        ("amqp://guest:guest@rabbit:notaport//", "port is not a number"),
        ("redis://h1:6379;redis://h2:6379", "only sentinel:// URLs may list several hosts"),
    ],
)
def test_bad_broker_urls_are_refused_without_echoing_them(
    url: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLLER_BROKER_URL", url)
    reset_settings()
    try:
        with pytest.raises(InvalidSettings) as caught:
            get_settings()
    finally:
        reset_settings()
    message = str(caught.value)
    assert "POLLER_BROKER_URL" in message and reason in message
    assert "guest" not in message


def test_the_store_must_be_redis() -> None:
    with pytest.raises(ValueError, match="must be a redis://"):
        settings(redis_url="amqp://guest:guest@127.0.0.1//")


def test_passwords_never_show_in_a_repr_or_a_redacted_url() -> None:
    s = settings(
        redis_url="rediss://app:store-secret@redis.example.com:6380/0",
        broker_url="amqps://app:broker-secret@rabbit.example.com:5671/prod",
    )
    assert "secret" not in repr(s) and "secret" not in str(s)
    assert redact_url(s.broker) == "amqps://app:***@rabbit.example.com:5671/prod"
    both = redact_url("sentinel://:pw1@h1:26379;sentinel://:pw2@h2:26380/2")
    assert both == "sentinel://:***@h1:26379;sentinel://:***@h2:26380/2"


def test_rabbitmq_gets_durable_queues_and_persistent_messages() -> None:
    conf = broker_conf(settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    [queue] = conf["task_queues"]
    assert queue.durable and queue.exchange.durable and not queue.queue_arguments
    assert conf["task_default_delivery_mode"] == "persistent"


def test_quorum_queues_are_declared_when_asked() -> None:
    s = settings(broker_url="amqp://guest:guest@127.0.0.1:5672//", broker_quorum_queues=True)
    [queue] = broker_conf(s)["task_queues"]
    assert queue.queue_arguments == {"x-queue-type": "quorum"}
    assert queue.exchange.type == "topic"  # Celery's native delayed delivery needs one


def test_redis_takes_back_a_dead_workers_messages_within_minutes() -> None:
    options = broker_conf(settings())["broker_transport_options"]
    assert options["visibility_timeout"] <= 300
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 10


def test_a_consumer_timeout_shorter_than_a_poll_is_refused() -> None:
    with pytest.raises(ValueError, match="POLLER_BROKER_CONSUMER_TIMEOUT"):
        settings(broker_url="amqp://h//", broker_consumer_timeout=100, lease_seconds=120)
    with pytest.raises(ValueError, match="POLLER_VISIBILITY_TIMEOUT"):
        settings(visibility_timeout=60, lease_seconds=120)


def test_a_visibility_timeout_does_not_bind_rabbitmq() -> None:
    s = settings(broker_url="amqp://h//", visibility_timeout=60, lease_seconds=50)
    assert s.broker_kind == "amqp"


def test_sentinel_urls_list_every_sentinel_and_need_a_master_name() -> None:
    url = "sentinel://:pw@10.0.0.1;sentinel://:pw@10.0.0.2:26380/3"
    target = parse_sentinel(url)
    assert target.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (target.db, target.password) == (3, "pw")
    with pytest.raises(ValueError, match="POLLER_REDIS_SENTINEL_MASTER"):
        settings(redis_url=url)
    s = settings(redis_url=url, redis_sentinel_master="mymaster")
    assert broker_conf(s)["broker_transport_options"]["master_name"] == "mymaster"


def test_a_sentinel_database_must_be_a_number() -> None:
    with pytest.raises(ValueError, match="must be a number"):
        parse_sentinel("sentinel://h1:26379/zero")


def test_a_callback_sent_again_after_a_crash_keeps_its_task_id() -> None:
    from export_poller.outbox import callback_task_id

    record = {"tracking_id": "abc123", "state": "completed"}
    again = callback_task_id(dict(record))
    assert callback_task_id(record) == again
    assert callback_task_id({**record, "tracking_id": "abc124"}) != again
