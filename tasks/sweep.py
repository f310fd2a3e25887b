"""The sweep (beat, every few seconds): send due and lost polls, fairly across accounts and
within the backlog bound; expire overdue exports; drain the callback outbox. Its work grows with
what is due, never with what is tracked."""

from __future__ import annotations

import math
from dataclasses import dataclass

from export_poller import clock, policy
from export_poller.account import rules
from export_poller.account.request import ProviderPool
from export_poller.account.train import TrainRunner
from export_poller.config.settings import Settings
from export_poller.outbox import Outbox
from export_poller.providers import errors
from export_poller.settle import SendPoll
from export_poller.store import Store

_SWEEP_ROUNDS = 10  # batches per sweep: bounded, so one sweep never runs long


@dataclass
class SweepReport:
    enqueued: int = 0
    expired: int = 0
    callbacks: int = 0


class Sweeper:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        send_poll: SendPoll,
        outbox: Outbox,
        trains: TrainRunner,
        providers: ProviderPool,
    ) -> None:
        self.settings, self.store, self.send_poll = settings, store, send_poll
        self.outbox, self.trains, self.providers = outbox, trains, providers

    def sweep(self) -> SweepReport:
        """Send due and lost polls, fairly across accounts and within the backlog bound;
        expire overdue exports; drain the outbox: work ~ due items."""
        report = SweepReport()
        now, s = clock.now(), self.settings
        self._send_fair_shares(now, report)
        for _ in range(_SWEEP_ROUNDS):
            expired = self.store.due(now, now + s.rescue_grace, s.sweep_batch, s.rescue_grace)
            for tid in expired:
                report.expired += int(self._expire(tid, now))
            if len(expired) < s.sweep_batch:
                break
        for tid in self.store.outbox_due(now, s.sweep_batch):
            report.callbacks += int(self.outbox.dispatch(tid))
        return report

    def _send_fair_shares(self, now: float, report: SweepReport) -> None:
        """Fill the broker's free room (POLLER_BACKLOG_MAX less the ready messages) with due
        polls, each account getting its max-min fair share and served in turn."""
        s = self.settings
        ready, accounts = self.store.share_state(now, s.rescue_grace)
        sizes = {a: self._train_size(a) for a in accounts}
        demand = {a: math.ceil(due / sizes[a]) for a, (due, _) in accounts.items()}
        room = min(s.backlog_max - ready, s.sweep_batch)
        shares = policy.fair_shares(room, demand, {a: r for a, (_, r) in accounts.items()})
        if not shares:
            return
        wants = [(a, n * sizes[a], sizes[a]) for a, n in shares.items()]
        taken, expired = self.store.take_due(now, now + s.rescue_grace, s.rescue_grace, wants)
        for tid in expired:
            report.expired += int(self._expire(tid, now))
        by_account: dict[str, list[tuple[str, str]]] = {}
        for account, tid, token in taken:
            by_account.setdefault(account, []).append((tid, token))
        trains = [[(a, t) for t in rules.chunks(p, sizes[a])] for a, p in by_account.items()]
        for account, train in policy.interleave(trains):
            self.send_poll(account, train, 0.0)
        report.enqueued += len(taken)

    def _train_size(self, account: str) -> int:
        """Exports per sweep message: the train this worker measured for the account (one
        request unmeasured: the poll takes the account's other due exports along anyway)."""
        try:
            return self.trains.size(account, self.providers.get(account))
        except errors.ConfigurationError:
            return 1

    def _expire(self, tid: str, now: float) -> bool:
        error = policy.deadline_error()
        fields = {"updated_at": now, "finished_at": now, "next_poll_at": "", "error": error}
        done = self.store.finish(
            tid,
            "timed_out",
            fields,
            now=now,
            notify=True,
            respect_lease=True,
            ttl=self.settings.record_ttl,
        )
        return done
