"""Faults, bad actors and secrets, end to end with real processes."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer

from export_poller.api import track_export
from export_poller.processes import Child, free_port, redis_ping, spawn, start_redis
from export_poller.providers.simulator.client import SimulatorClient
from export_poller.providers.simulator.server import start_in_thread
from tests.integration.conftest import (
    PREFIX,
    Fleet,
    callback_sigs,
    override,
    redis_dump,
    wait_for,
)
from tests.integration.test_fleet import MIX, assert_one_callback_each, track_cases

pytestmark = pytest.mark.integration


def test_thirty_percent_faults_and_every_export_still_ends_in_its_true_state(
    fleet: Fleet, sim_client: SimulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    override(fleet, monkeypatch, {"POLLER_HTTP_READ_TIMEOUT": "1", "POLLER_BACKOFF_MAX": "2"})
    sim_client.set_faults(
        0.3, ["503", "500", "slow", "reset", "garbage", "redirect"], delay_s=1.5, seed=7
    )
    workers = [fleet.worker("w1"), fleet.worker("w2")]
    fleet.beat()
    redirected = (
        "chaossearch",
        {
            "outcome": "completed",
            "running_polls": 2,
            "faults": [{"kind": "redirect", "polls": [1, 2]}],
        },
        "completed",
    )
    expected = track_cases(sim_client, [*MIX, *MIX, redirected])
    assert_one_callback_each(fleet, expected)
    stats = sim_client.stats()["providers"]
    assert sum(p["statuses"].get("503", 0) + p["statuses"].get("500", 0) for p in stats.values())
    assert stats["chaossearch"]["statuses"].get("307", 0) > 0
    for worker in workers:
        assert worker.alive() and "Traceback" not in worker.output()


def test_breaker_opens_while_a_provider_is_down_and_closes_when_it_recovers(
    fleet: Fleet, sim_client: SimulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    override(
        fleet,
        monkeypatch,
        {
            "POLLER_BREAKER_MIN_CALLS": "4",
            "POLLER_BREAKER_COOLDOWN": "2",
            "POLLER_BREAKER_MAX_COOLDOWN": "4",
        },
    )
    sim_client.set_faults(1.0, ["503"], providers=["saymon"])
    fleet.worker()
    fleet.beat()
    expected = track_cases(
        sim_client, [("saymon", {"outcome": "completed", "running_polls": 2}, "completed")] * 6
    )
    breaker = f"{PREFIX}:brk:saymon:open"
    wait_for(lambda: fleet.r.exists(breaker), 60, "the saymon breaker to open")
    down = sim_client.stats()["providers"]["saymon"]["requests"]
    sim_client.set_faults(0.0)
    assert_one_callback_each(fleet, expected)
    assert not fleet.r.exists(breaker)
    held = float(fleet.r.hget(f"{PREFIX}:metrics", "polls|saymon|throttled") or 0)
    assert held > 0, "polls were held back together while the breaker was open"
    assert down < 6 * 8, "each export hammered alone instead of backing off together"


SECRETS = {
    "token": "tok-9f1c2e77ab54",
    "password": "pw-3b7d11c0e9aa",
    "secret_key": "sk-0d2f4c6e8a1b3c5d",
}


def test_no_secret_reaches_redis_logs_callbacks_or_task_arguments(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = start_in_thread(
        port=0,
        tokens=[SECRETS["token"]],
        users={"alice": SECRETS["password"]},
        aws_keys={"AKIDSECRETSCAN": SECRETS["secret_key"]},
    )
    try:
        client = SimulatorClient(sim.url)
        settings = {}
        for provider in ("chaossearch", "saymon", "biodatacatalyst", "cometly", "cgc"):
            settings[f"POLLER_ACCOUNTS__{provider.upper()}__BASE_URL"] = sim.url
        for provider in ("biodatacatalyst", "cometly", "cgc"):
            settings[f"POLLER_ACCOUNTS__{provider.upper()}__TOKEN"] = SECRETS["token"]
        settings |= {
            "POLLER_ACCOUNTS__SAYMON__USERNAME": "alice",
            "POLLER_ACCOUNTS__SAYMON__PASSWORD": SECRETS["password"],
            "POLLER_ACCOUNTS__CHAOSSEARCH__ACCESS_KEY": "AKIDSECRETSCAN",
            "POLLER_ACCOUNTS__CHAOSSEARCH__SECRET_KEY": SECRETS["secret_key"],
        }
        override(fleet, monkeypatch, settings)
        worker = fleet.worker()
        cases = [
            (p, {**job, "faults": [{"kind": "401", "polls": [1]}]}, state) for p, job, state in MIX
        ]
        expected = track_cases(client, cases)
        assert_one_callback_each(fleet, expected)
        haystacks = {"redis": redis_dump(fleet.r), "worker log": worker.output()}
        for where, text in haystacks.items():
            for name, secret in SECRETS.items():
                assert secret not in text, f"{name} leaked into the {where}"
    finally:
        sim.stop()


class Boom:
    """Unpickling this would create a file: proof that a pickled message was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_a_pickled_message_is_rejected_not_executed(fleet: Fleet, tmp_path: Path) -> None:
    worker = fleet.worker()
    marker = tmp_path / "pickle-was-executed"
    with Connection(fleet.env.get("POLLER_BROKER_URL") or fleet.env["POLLER_REDIS_URL"]) as conn:
        producer = Producer(
            conn, exchange=Exchange("export-poller", type="direct"), routing_key="export-poller"
        )
        body = pickle.dumps(((Boom(str(marker)),), {}, {}))
        producer.publish(
            body,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"task": "exports.poll", "id": "evil-1", "lang": "py"},
        )
    wait_for(
        lambda: "Refusing to deserialize" in worker.output(),
        30,
        "the worker to refuse the pickled message",
    )
    assert not marker.exists()
    assert worker.alive()


def test_accounts_isolate_tenants(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = start_in_thread(port=0, tokens=["tenant-a-token", "tenant-b-token"])
    try:
        client = SimulatorClient(sim.url)
        settings = {}
        for name in ("a", "b"):
            prefix = f"POLLER_ACCOUNTS__TENANT_{name.upper()}__"
            settings |= {
                prefix + "PROVIDER": "cgc",
                prefix + "BASE_URL": sim.url,
                prefix + "TOKEN": f"tenant-{name}-token",
            }
        override(fleet, monkeypatch, settings)
        fleet.worker()
        expected = {}
        for i in range(10):
            name = "ab"[i % 2]
            job = client.create_job("cgc", owner=f"tenant-{name}-token", running_polls=2)
            tid = track_export(
                "cgc", str(job), account=f"tenant_{name}", timeout=60, **callback_sigs()
            )
            expected[tid] = "completed"
        assert_one_callback_each(fleet, expected)
        assert sim_404s(client) == 0
    finally:
        sim.stop()


def sim_404s(client: SimulatorClient) -> int:
    stats = client.stats()["providers"]["cgc"]
    return int(stats["statuses"].get("404", 0))


def test_password_protected_redis_works_and_the_password_is_never_logged(
    workdir: Path, sim: Any
) -> None:
    from export_poller.demo import fast_env
    from tests.integration.test_operations import cli, one_line_error

    password = "rds-pass-5e6f7a8b"
    server = start_redis(workdir, requirepass=password)
    url = server.extra["url"]
    settings = fast_env(url, sim.url, prefix=PREFIX)
    fleet = Fleet({**os.environ, **settings}, workdir)
    try:
        worker = fleet.worker("protected")
        client = SimulatorClient(sim.url)
        expected = {}  # tracked from a fresh process: this one's broker pool is the session's
        for provider, job, _state in MIX[:3]:
            export_id = str(client.create_job(provider, **job))
            tracked = cli(
                fleet.env,
                "track",
                provider,
                export_id,
                "--on-complete",
                "exports.record_callback",
                "--on-failure",
                "exports.record_callback",
            )
            assert tracked.returncode == 0, tracked.stderr
            expected[tracked.stdout.strip()] = 1
        callbacks = fleet.wait_for_callbacks(3)
        per_export = collections.Counter(c["record"]["tracking_id"] for c in callbacks)
        assert per_export == expected
        assert password not in worker.output()
        listed = cli(fleet.env, "list")
        assert listed.returncode == 0 and password not in listed.stdout + listed.stderr
        wrong = {**fleet.env, "POLLER_REDIS_URL": url.replace(password, "wrong-password")}
        one_line_error(cli(wrong, "list"), "Redis refused the password")
    finally:
        fleet.stop()
        server.stop()


def tls_redis(workdir: Path, password: str) -> tuple[Child, str]:
    """A redis-server speaking only TLS, with a throwaway self-signed certificate."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    argv = [
        "redis-server",
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--requirepass",
        password,
        "--dir",
        str(workdir),
    ]
    child = spawn(f"tls-redis-{port}", argv, os.environ, workdir)
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    wait_for(lambda: redis_ping(url), 20, "the TLS redis-server")
    return child, url


def test_rediss_with_a_password_works_and_is_shown_redacted(workdir: Path, sim: Any) -> None:
    from export_poller.demo import fast_env
    from tests.integration.test_operations import cli

    password = "tls-pass-0c1d2e3f"
    run_dir = workdir / "tls"
    run_dir.mkdir(exist_ok=True)
    server, url = tls_redis(run_dir, password)
    fleet = Fleet({**os.environ, **fast_env(url, sim.url, prefix=PREFIX)}, run_dir)
    try:
        worker = fleet.worker("tls-worker")
        client = SimulatorClient(sim.url)
        for provider, job, _state in MIX[:3]:
            tracked = cli(
                fleet.env,
                "track",
                provider,
                str(client.create_job(provider, **job)),
                "--on-complete",
                "exports.record_callback",
                "--on-failure",
                "exports.record_callback",
            )
            assert tracked.returncode == 0, tracked.stderr
        assert len(fleet.wait_for_callbacks(3)) == 3
        log = worker.output()
        assert "rediss://" in log and password not in log
    finally:
        fleet.stop()
        server.stop()
