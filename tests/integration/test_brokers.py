"""The broker as a platform team meets it: the health probe, RabbitMQ's queue types, Sentinel."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from export_poller.processes import (
    DEFAULT_AMQP_URL,
    Child,
    free_port,
    rabbitmq_vhost,
    redis_ping,
    spawn,
    start_redis,
    wait_until,
)
from export_poller.providers.simulator.client import SimulatorClient
from tests.integration.conftest import BROKER, Fleet
from tests.integration.test_fleet import MIX
from tests.integration.test_operations import cli

pytestmark = pytest.mark.integration


def test_health_passes_on_the_running_store_and_broker(env: dict[str, str]) -> None:
    result = cli(env, "health", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and [c["name"] for c in report["checks"]] == [
        "settings",
        "redis",
        "broker",
        "accounts",
    ]
    broker = next(c for c in report["checks"] if c["name"] == "broker")
    assert broker["detail"].startswith("amqp://" if BROKER == "rabbitmq" else "redis://")


def test_health_names_what_is_down_in_one_line(env: dict[str, str]) -> None:
    closed = f"127.0.0.1:{free_port()}"
    down = {**env, "POLLER_BROKER_URL": f"amqp://guest:hunter2-secret@{closed}//"}
    result = cli(down, "health")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("unhealthy: broker: ") and result.stderr.count("\n") == 1
    assert "hunter2-secret" not in result.stderr
    no_redis = {**env, "POLLER_REDIS_URL": f"redis://{closed}/0", "POLLER_BROKER_URL": ""}
    result = cli(no_redis, "health")
    assert result.returncode == 1 and result.stderr.startswith("unhealthy: redis: ")
    bad_account = {**env, "POLLER_ACCOUNTS__BROKEN__PROVIDER": "chaossearch"}
    result = cli(bad_account, "health")
    assert result.returncode == 1
    assert "unhealthy: accounts:" in result.stderr and "BASE_URL" in result.stderr


def track_by_cli(fleet: Fleet, sim: SimulatorClient, count: int) -> dict[str, int]:
    """Tracked from a fresh process, which reads the fleet's broker settings as a user's would."""
    expected = {}
    for provider, job, _state in MIX[:count]:
        export_id = str(sim.create_job(provider=provider, pending_polls=1, **job))
        on = ("--on-complete", "exports.record_callback", "--on-failure", "exports.record_callback")
        tracked = cli(fleet.env, "track", provider, export_id, *on)
        assert tracked.returncode == 0, tracked.stderr
        expected[tracked.stdout.strip()] = 1
    return expected


def one_callback_each(fleet: Fleet, expected: dict[str, int]) -> None:
    callbacks = fleet.wait_for_callbacks(len(expected))
    assert collections.Counter(c["record"]["tracking_id"] for c in callbacks) == expected


@pytest.mark.skipif(BROKER != "rabbitmq", reason="quorum queues are RabbitMQ's")
def test_quorum_queues_deliver_every_export_once(fleet: Fleet, sim_client: SimulatorClient) -> None:
    with rabbitmq_vhost(os.environ.get("POLLER_TEST_AMQP_URL", DEFAULT_AMQP_URL)) as url:
        fleet.env |= {"POLLER_BROKER_URL": url, "POLLER_BROKER_QUORUM_QUEUES": "true"}
        worker = fleet.worker()
        fleet.beat()
        one_callback_each(fleet, track_by_cli(fleet, sim_client, len(MIX)))
        fleet.stop()
        assert "Traceback" not in worker.output()


def start_sentinel(workdir: Path, master_port: int) -> tuple[Child, int]:
    binary = shutil.which("redis-server")
    assert binary
    port = free_port()
    conf = workdir / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor it-master 127.0.0.1 {master_port} 1\n"
    )
    child = spawn(f"sentinel-{port}", [binary, str(conf), "--sentinel"], os.environ, workdir)
    wait_until(lambda: redis_ping(f"redis://127.0.0.1:{port}"), 20, "redis sentinel")
    return child, port


@pytest.mark.skipif(BROKER != "redis", reason="the Redis broker through Sentinel")
def test_store_and_broker_through_sentinel(
    fleet: Fleet, workdir: Path, sim_client: SimulatorClient
) -> None:
    master = start_redis(workdir)
    try:
        sentinel, port = start_sentinel(workdir, urlsplit(master.extra["url"]).port or 0)
        fleet.children.append(sentinel)
        fleet.r = redis.Redis.from_url(master.extra["url"], decode_responses=True)
        fleet.env |= {
            "POLLER_REDIS_URL": f"sentinel://127.0.0.1:{port}/0",
            "POLLER_BROKER_URL": "",
            "POLLER_REDIS_SENTINEL_MASTER": "it-master",
        }
        worker = fleet.worker("sentinel-worker")
        fleet.beat()
        one_callback_each(fleet, track_by_cli(fleet, sim_client, 3))
        assert cli(fleet.env, "health").returncode == 0
        assert "sentinel://" in worker.output()
    finally:
        fleet.stop()
        master.stop()


def test_docker_compose_has_a_rabbitmq_profile() -> None:
    binary = shutil.which("docker-compose")
    if binary is None and not os.environ.get("CI"):
        pytest.skip("docker-compose is not installed (CI installs Debian's package)")
    assert binary, "docker-compose is missing in CI"
    compose = str(Path(__file__).resolve().parents[2] / "docker-compose.yml")
    url = "amqp://poller:poller@rabbitmq:5672//"
    env = {**os.environ, "POLLER_BROKER_URL": url}
    result = subprocess.run(
        [binary, "-f", compose, "--profile", "rabbitmq", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert "rabbitmq" in config["services"]
    assert config["services"]["worker"]["environment"]["POLLER_BROKER_URL"] == url
    assert "healthcheck" in config["services"]["rabbitmq"]


def test_polls_and_callbacks_leave_through_a_confirming_producer(env: dict[str, str]) -> None:
    from export_poller.runtime import confirmed_producer

    with confirmed_producer() as producer:
        if BROKER == "redis":
            assert producer is None  # Redis has no publisher confirms: Celery's own producer
            return
        assert producer is not None
        assert producer.connection.transport_options == {"confirm_publish": True}
        producer.publish({"probe": 1}, routing_key="export-poller-nowhere")  # returns: confirmed
