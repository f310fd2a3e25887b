"""Fair share under overload and the bounded broker backlog: the share arithmetic on its own,
then the engine with fakeredis, a fake broker and a fake clock."""

from __future__ import annotations

import pytest

from export_poller import policy
from export_poller.config.settings import AccountSettings, Settings
from export_poller.engine import Engine
from export_poller.store import Store
from tests.unit.conftest import Broker, Clock, FakePool, ScriptedProvider

CAP = 4

# -- the arithmetic -----------------------------------------------------------------------------


def test_a_small_account_is_served_in_full_and_a_big_one_takes_the_rest() -> None:
    shares = policy.fair_shares(10, {"big": 500, "small": 3}, {"big": 8, "small": 0})
    assert shares == {"small": 3, "big": 7}


def test_equal_accounts_split_the_room_evenly_and_nothing_is_given_beyond_demand() -> None:
    assert policy.fair_shares(10, {"a": 100, "b": 100}, {}) == {"a": 5, "b": 5}
    assert policy.fair_shares(10, {"a": 2, "b": 1}, {}) == {"a": 2, "b": 1}


def test_no_room_or_no_demand_gives_nothing() -> None:
    assert policy.fair_shares(0, {"a": 5}, {}) == {}
    assert policy.fair_shares(-3, {"a": 5}, {}) == {}
    assert policy.fair_shares(5, {"a": 0}, {}) == {}


def test_an_account_already_holding_the_broker_waits_for_the_others_to_catch_up() -> None:
    assert policy.fair_shares(4, {"big": 50, "small": 50}, {"big": 6, "small": 0}) == {"small": 4}


def test_weights_split_the_room_in_proportion() -> None:
    shares = policy.fair_shares(8, {"gold": 50, "free": 50}, {}, {"gold": 3.0, "free": 1.0})
    assert shares == {"gold": 6, "free": 2}


def test_accounts_are_served_in_turn() -> None:
    assert policy.interleave([[1, 2, 3], [10], [20, 21]]) == [1, 10, 20, 2, 21, 3]


@pytest.mark.parametrize(
    ("ready", "mine", "busy", "expected"),
    [
        (0, 0, 1, True),
        (63, 10, 1, True),
        (64, 10, 1, False),  # the fleet's bound
        (10, 32, 2, False),  # its share of two busy accounts
        (10, 31, 2, True),
        (500, 0, 9, True),  # an account with nothing ready always gets one message in
    ],
)
def test_admission(ready: int, mine: int, busy: int, expected: bool) -> None:
    assert policy.admits(ready, mine, cap=64, busy=busy) is expected


# -- the engine and the store ------------------------------------------------------------------


@pytest.fixture
def two_accounts(store: Store, broker: Broker, fake_clock: Clock) -> Engine:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        accounts={n: AccountSettings(provider="scripted") for n in ("big", "small")},
        backoff_initial=5,
        backoff_max=300,
        rescue_grace=30,
        enqueue_horizon=60,
        backlog_max=CAP,
    )
    return Engine(
        settings,
        store,
        broker.send_poll,
        broker.send_callback,
        providers=FakePool(ScriptedProvider()),  # type: ignore[arg-type]
        rand=lambda: 1.0,
    )


def track(engine: Engine, account: str, n: int) -> list[str]:
    fields = {"provider": "scripted", "account": account}
    return [engine.track({**fields, "export_id": f"{account}-{i}"}, 3600) for i in range(n)]


def accounts_of(engine: Engine, messages: list[tuple[list[tuple[str, str]], float]]) -> list[str]:
    return [engine.store.get(pairs[0][0])["account"] for pairs, _ in messages]  # type: ignore[index]


def test_a_burst_of_tracking_hands_the_broker_a_bounded_number_of_messages(
    two_accounts: Engine, broker: Broker, store: Store, fake_clock: Clock
) -> None:
    big = track(two_accounts, "big", 20)
    assert len(broker.messages) == CAP  # the other 16 first polls wait in Redis, due now
    parked = [t for t in big if store.r.zscore(store.sched, t) == fake_clock.t]
    assert len(parked) == 20 - CAP
    track(two_accounts, "small", 1)  # the broker is full, but small has nothing in it
    assert accounts_of(two_accounts, broker.messages)[-1] == "small"


def test_the_sweep_fills_the_free_room_fairly_and_in_turn(
    two_accounts: Engine, broker: Broker, fake_clock: Clock
) -> None:
    track(two_accounts, "big", 20)
    track(two_accounts, "small", 3)  # one admitted, two parked behind big's backlog
    assert accounts_of(two_accounts, broker.take_messages()) == ["big"] * CAP + ["small"]
    fake_clock.advance(31)  # those five messages were lost (no worker): their count expires
    report = two_accounts.sweep()
    sent = broker.take_messages()
    order = accounts_of(two_accounts, sent)
    assert sorted(order) == ["big", "big", "small", "small"]  # two each, though big has more
    assert order[0] != order[1] and order[2] != order[3]  # in turn
    assert report.enqueued == CAP
    two_accounts.sweep()  # the broker still holds those four: no room, nothing more sent
    assert broker.messages == []


def test_a_follow_up_over_the_accounts_share_is_parked_and_the_sweep_sends_it(
    two_accounts: Engine, broker: Broker, store: Store, fake_clock: Clock
) -> None:
    big = track(two_accounts, "big", 8)  # four in the broker, four parked
    assert len(broker.take_messages()) == CAP
    parked = big[-1]
    two_accounts.poll(parked, store.get(parked)["token"])  # type: ignore[index]
    # its follow-up (in 5 s) would be a fifth ready message of one account: parked, at its time
    assert broker.messages == []
    assert store.r.zscore(store.sched, parked) == pytest.approx(fake_clock.t + 5)
    fake_clock.advance(31)  # long after: whatever the broker held is forgotten
    two_accounts.sweep()
    messages = broker.take_messages()
    assert len(messages) <= CAP
    assert sorted(tid for pairs, _ in messages for tid, _ in pairs) == sorted(big)


def test_the_sweep_keeps_each_accounts_lag_for_the_views(
    two_accounts: Engine, store: Store, fake_clock: Clock
) -> None:
    track(two_accounts, "big", 20)
    track(two_accounts, "small", 1)
    fake_clock.advance(12)
    two_accounts.sweep()
    lags = {k: v for k, v in store.metric_fields().items() if k.startswith("lag|")}
    assert lags["lag|big"] == pytest.approx(12.0)  # its parked first polls are 12 s late
    assert lags["lag|small"] == pytest.approx(12.0)  # its one poll was sent, never answered
