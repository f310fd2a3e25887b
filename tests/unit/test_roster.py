"""The roster: what the live workers serve, published by their heartbeats and read by track."""

from __future__ import annotations

import json
from types import SimpleNamespace

import fakeredis
import pytest
from celery import Celery
from click.testing import CliRunner

from export_poller import cli, heartbeat, runtime
from export_poller.celery import app
from export_poller.config.settings import AccountSettings, Settings
from export_poller.engine import Engine
from export_poller.heartbeat import Heartbeat, served_accounts
from export_poller.processes import wait_until
from export_poller.providers import errors
from export_poller.roster import Roster, refusal, table
from export_poller.store.fleet import Fleet, Worker
from export_poller.store.keys import Keys
from tests.unit.conftest import Clock

W1 = Worker("w1@a", {"acme": "cometly", "acme-cgc": "cgc"}, "a", 11, 100.0)
W2 = Worker("w2@b", {"acme": "cometly"}, "b", 12, 105.0)


@pytest.fixture
def fleet(redis_client: fakeredis.FakeRedis) -> Fleet:
    return Fleet(redis_client, Keys("test"))


# -- the policy, without Redis ---------------------------------------------------------------


def test_an_account_a_live_worker_serves_at_its_provider_is_accepted() -> None:
    assert refusal([W1, W2], "acme", "cometly") is None
    assert refusal([W1, W2], "acme-cgc", "cgc") is None


def test_an_unknown_account_is_named_with_a_did_you_mean_among_served_names() -> None:
    error = refusal([W1, W2], "acme-cgcc", "cgc")
    assert isinstance(error, errors.UnknownAccount)
    assert str(error) == (
        "unknown account 'acme-cgcc'; did you mean 'acme-cgc'? no live worker serves it (the "
        "live workers serve acme (cometly), acme-cgc (cgc)); configure it on the workers with "
        "POLLER_ACCOUNTS__ACME-CGCC__PROVIDER=cgc and its credentials"
    )
    far = str(refusal([W2], "zebra", "cgc"))
    assert far.startswith("unknown account 'zebra': no live worker serves it") and "mean" not in far


def test_with_no_live_worker_the_refusal_says_so_and_where_it_looked() -> None:
    error = refusal([], "acme", "cometly", "redis://h:6379/0 with key prefix 'ep'")
    assert isinstance(error, errors.UnknownAccount)
    assert "no live worker on redis://h:6379/0 with key prefix 'ep'; start a worker" in str(error)
    assert "POLLER_ACCOUNTS__ACME__PROVIDER=cometly" in str(error)


def test_a_wrong_provider_or_workers_that_disagree_are_configuration_errors() -> None:
    wrong = refusal([W1], "acme-cgc", "cometly")
    assert type(wrong) is errors.ConfigurationError
    assert str(wrong) == "account 'acme-cgc' is a cgc account, not cometly"
    drift = Worker("w3@c", {"acme": "cgc"})
    split = refusal([W1, drift], "acme", "cometly")
    assert type(split) is errors.ConfigurationError
    assert str(split) == (
        "the live workers disagree on the provider of account 'acme' (cgc on w3@c; cometly on "
        "w1@a): give it one provider on every worker"
    )


def test_a_long_roster_is_cut_short_in_a_refusal() -> None:
    many = Worker("big@x", {f"acct{i:02d}": "cgc" for i in range(25)})
    text = str(refusal([many], "other", "cgc"))
    assert "acct09 (cgc)" in text and "acct10" not in text and "and 15 more" in text


def test_the_table_has_one_row_per_account_with_its_workers_and_latest_heartbeat() -> None:
    assert table([W2, W1]) == [
        {"account": "acme", "provider": "cometly", "workers": ["w1@a", "w2@b"]}
        | {"last_heartbeat": 105.0},
        {"account": "acme-cgc", "provider": "cgc", "workers": ["w1@a"], "last_heartbeat": 100.0},
    ]


def test_a_worker_publishes_names_and_providers_never_a_secret() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        accounts={"Space": AccountSettings(provider="cgc", token="s3cr3t-token")},
    )
    assert served_accounts(settings) == {"space": "cgc"}
    assert "s3cr3t" not in Worker("w", served_accounts(settings)).entry()


# -- the Redis state -------------------------------------------------------------------------


def test_heartbeats_list_live_workers_and_a_clean_stop_leaves_at_once(fleet: Fleet) -> None:
    fleet.heartbeat(W1, ttl=30)
    fleet.heartbeat(W2, ttl=30)
    assert sorted(w.name for w in fleet.live()) == ["w1@a", "w2@b"]
    assert fleet.live()[0] == W1  # everything the entry says comes back
    fleet.leave("w1@a")
    assert [w.name for w in fleet.live()] == ["w2@b"]


def test_an_expired_entry_drops_out_and_is_pruned_from_the_listing(
    fleet: Fleet, redis_client: fakeredis.FakeRedis
) -> None:
    fleet.heartbeat(W1, ttl=30)
    fleet.heartbeat(W2, ttl=0.05)
    wait_until(lambda: not redis_client.exists("test:fleet:w2@b"), 5, "the entry to expire")
    assert [w.name for w in fleet.live()] == ["w1@a"]
    assert redis_client.zrange("test:fleet", 0, -1) == [b"w1@a"]
    assert 0 < redis_client.pttl("test:fleet:w1@a") <= 30_000


def test_an_unreadable_entry_is_skipped_not_fatal(
    fleet: Fleet, redis_client: fakeredis.FakeRedis
) -> None:
    fleet.heartbeat(W1, ttl=30)
    redis_client.set("test:fleet:w9@z", "{not json")
    redis_client.zadd("test:fleet", {"w9@z": 1.0})
    assert [w.name for w in fleet.live()] == ["w1@a"]


class CountingFleet:
    """The roster's Redis reads, counted; what it answers can change between reads."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers, self.reads = workers, 0

    def live(self) -> list[Worker]:
        self.reads += 1
        return list(self.workers)


def test_a_burst_of_checks_reads_redis_once_but_a_refusal_reads_it_again() -> None:
    now = [0.0]
    source = CountingFleet([W2])
    roster = Roster(source, "here", monotonic=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(50):
        roster.check("acme", "cometly")
    assert source.reads == 1
    source.workers.append(W1)  # a worker serving acme-cgc has just started
    roster.check("acme-cgc", "cgc")  # not refused from the stale read
    assert source.reads == 2
    source.workers.clear()  # every worker stopped
    now[0] += 2.0
    with pytest.raises(errors.UnknownAccount, match="no live worker on here"):
        roster.check("acme", "cometly")


# -- the worker's side -----------------------------------------------------------------------


def test_a_heartbeat_is_in_the_roster_when_started_refreshes_and_leaves_on_stop(
    fleet: Fleet, redis_client: fakeredis.FakeRedis
) -> None:
    beat = Heartbeat(fleet, "w1@a", {"acme": "cometly"}, interval=0.05)
    beat.start()
    try:
        (worker,) = fleet.live()  # published before start() returned
        assert worker.accounts == {"acme": "cometly"} and worker.pid > 0
        first = worker.seen_at
        wait_until(lambda: fleet.live()[0].seen_at > first, 5, "a second heartbeat")
        assert 0 < redis_client.pttl("test:fleet:w1@a") <= 150  # three intervals
    finally:
        beat.stop()
    assert fleet.live() == []


def test_only_this_services_workers_join_the_roster(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, settings: Settings
) -> None:
    monkeypatch.setattr(runtime, "get_engine", lambda: engine)
    roster = Fleet(engine.store.r, engine.store.keys)
    other = Celery("myapp")  # an application's worker that imports this package
    heartbeat._on_ready(sender=SimpleNamespace(app=other, hostname="myapp@h"))
    assert roster.live() == []
    heartbeat._on_ready(sender=SimpleNamespace(app=app, hostname="poller@h"))
    try:
        (worker,) = roster.live()
        assert worker.name == "poller@h" and worker.accounts == {"scripted": "scripted"}
    finally:
        heartbeat._on_shutdown(sender=SimpleNamespace(app=app))
    assert roster.live() == []


def test_the_accounts_command_lists_the_roster(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, fake_clock: Clock
) -> None:
    monkeypatch.setattr(runtime, "get_engine", lambda: engine)
    runner = CliRunner()
    empty = runner.invoke(cli.main, ["accounts"])
    assert empty.exit_code == 1 and empty.stdout.startswith("no live worker on redis://")
    fleet = Fleet(engine.store.r, engine.store.keys)
    fleet.heartbeat(Worker("w1@a", W1.accounts, "a", 11, fake_clock.t - 4), ttl=30)
    fleet.heartbeat(Worker("w2@b", W2.accounts, "b", 12, fake_clock.t - 2), ttl=30)
    text = runner.invoke(cli.main, ["accounts"]).stdout.splitlines()
    assert text[0].split() == ["ACCOUNT", "PROVIDER", "WORKERS", "LAST", "HEARTBEAT"]
    assert text[1].split()[:4] == ["acme", "cometly", "w1@a,", "w2@b"]
    assert text[1].endswith("(2s ago)") and text[2].endswith("(4s ago)")
    assert text[-1] == "2 live: w1@a, w2@b"
    data = json.loads(runner.invoke(cli.main, ["accounts", "--json"]).stdout)
    assert [r["account"] for r in data["accounts"]] == ["acme", "acme-cgc"]
    assert data["workers"][1] | {"last_heartbeat": 0} == {
        "name": "w2@b", "host": "b", "pid": 12, "last_heartbeat": 0,
        "accounts": {"acme": "cometly"},
    }  # fmt: skip
