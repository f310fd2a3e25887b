"""The engine: track, cancel and poll, and the wiring of the rooms that do the rest.

    poll -> account.train (waves; account.request, account.gate, account.bisect)
         -> settle (plan, commit, follow-ups) -> outbox (the caller's callback)
    sweep -> sweep;  get, backlog_view -> views

Celery is only the delivery of hints here. `Engine` gets two senders (a poll message, the
caller's callback) so the same code runs under a real worker and in unit tests with a fake
broker and fakeredis; `runtime.get_engine` wires the real ones (`outbox.fire_callback`).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from export_poller import clock
from export_poller.account import rules
from export_poller.account.guard import AccountGuard
from export_poller.account.request import ProviderPool
from export_poller.account.train import TrainRunner, timed_out
from export_poller.config.settings import Settings
from export_poller.outbox import FireCallback, Outbox
from export_poller.providers import errors
from export_poller.providers.base import Provider
from export_poller.providers.models import Outcome
from export_poller.records import compact_signature
from export_poller.roster import Roster, where
from export_poller.settle import SendPoll, Settler
from export_poller.store import Claim, Store
from export_poller.store.fleet import Fleet
from export_poller.sweep import Sweeper, SweepReport
from export_poller.views import Views

log = logging.getLogger("export_poller.poll")

# Routine when a train took the export along before its own message came (busy, stale), or it
# ended meanwhile (done): said at DEBUG. A message naming another account's export (misrouted)
# is a sender's bug or a forged message: nothing is written for it, and it is said loudly.
_DROP_LEVELS = {"busy": logging.DEBUG, "stale": logging.DEBUG, "done": logging.DEBUG}
_DROP_LEVELS["misrouted"] = logging.WARNING
_DROPPED = "poll dropped tracking_id=%s reason=%s account=%s"
_LOGGED_DROPS = 5  # per message: the log stays bounded whatever a message names
_MOST_PER_MESSAGE = 1000  # above any train we send (50 by default, a CGC request holds 100)


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        send_poll: SendPoll,
        fire_callback: FireCallback,
        *,
        providers: ProviderPool | None = None,
        guard: AccountGuard | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.store = store
        self.send_poll = send_poll
        self.providers = providers or ProviderPool(settings)
        self.guard = guard
        self.outbox = Outbox(settings, store, fire_callback)
        self.settler = Settler(settings, store, send_poll, self.outbox, rand)
        self.trains = TrainRunner(settings, guard, rand)
        self.sweeper = Sweeper(settings, store, send_poll, self.outbox, self.trains, self.providers)
        self.views = Views(settings, store, guard)
        self.roster = Roster(Fleet(store.r, store.keys), where(settings))

    # -- tracking ----------------------------------------------------------------------------

    def track(self, fields: dict[str, Any], timeout: float, tracking_id: str | None = None) -> str:
        """Store a new record (or find the active one) and send its first poll now; with a
        caller-chosen id, "" means that id is already used by another export."""
        now = clock.now()
        token = uuid.uuid4().hex[:16]
        record = {
            **self._compact(fields, timeout),
            "state": "pending",
            "attempts": 0,
            "refusals": 0,
            "created_at": now,
            "updated_at": now,
            "deadline": now + timeout,
            "next_poll_at": now,
            "token": token,
        }
        store_track = self.store.track_as if tracking_id else self.store.track
        created, tid, admitted = store_track(
            tracking_id or uuid.uuid4().hex[:20],
            record,
            rescue_at=now + self.settings.rescue_grace,
            cap=self.settings.backlog_max,
            grace=self.settings.rescue_grace,
        )
        if created and admitted:  # else parked by the backlog bound, for the fair sweep
            self.send_poll(str(fields["account"]), [(tid, token)], 0.0)
        return tid

    def _compact(self, fields: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Signatures become shared references; empty values are left out of the record."""
        out = {k: v for k, v in fields.items() if k not in ("on_complete", "on_failure")}
        ttl = timeout + self.settings.record_ttl + self.settings.rescue_grace
        for name in ("on_complete", "on_failure"):
            if fields.get(name):
                out[name] = self.store.put_signature(compact_signature(fields[name]), ttl)
        if not out.get("metadata"):
            out.pop("metadata", None)
        return out

    def cancel(self, tid: str) -> bool:
        fields = {"updated_at": clock.now(), "finished_at": clock.now(), "next_poll_at": ""}
        return self.store.finish(
            tid,
            "cancelled",
            fields,
            now=clock.now(),
            notify=False,
            respect_lease=False,
            ttl=self.settings.record_ttl,
        )

    def get(self, tid: str) -> dict[str, Any] | None:
        """The public record (see `views.Views.get`)."""
        return self.views.get(tid)

    def backlog_view(self) -> dict[str, Any]:
        """The fleet's backlog for operators (see `views.Views.backlog_view`)."""
        return self.views.backlog_view()

    def sweep(self) -> SweepReport:
        """Due and lost polls out, overdue exports expired, the outbox drained (`sweep.py`)."""
        return self.sweeper.sweep()

    # -- one poll ----------------------------------------------------------------------------

    def poll(
        self,
        tid: str,
        token: str,
        more: Sequence[tuple[str, str]] = (),
        account: str | None = None,
    ) -> str:
        """Poll the exports a message names that are still its to poll; returns what became of
        the first (its new state, or why the message was dropped: stale, busy, done...).

        A message names one export or a train of one account's exports, and that account (a
        message sent before messages named it costs a read of its records first). The run
        takes the account's other due exports along, up to what fits in its time, so a fleet
        sends one message per train instead of one per poll; every export still has its own
        claim, commit and callback.
        """
        now = clock.now()
        pairs = self._bounded([(tid, token), *more])
        account = self._account_of(pairs) if account is None else account
        if account is None:
            log.info("poll dropped tracking_id=%s reason=missing", tid)
            return "missing"
        lease_until, due_by = now + self.settings.lease_seconds, now + self.settings.backoff_floor
        results, due = self.store.claim_message(
            pairs,
            uuid.uuid4().hex,
            account=account,
            now=now,
            lease_until=lease_until,
            due_by=due_by,
            most=2 * self._train_size(account),  # read with the claim: the run's candidates
        )
        claims = self._sort_out(account, pairs, results, now)
        states = self._poll_account(account, claims, due, now, lease_until) if claims else {}
        first = results[0]
        if isinstance(first, str):
            return first.partition(":")[0]
        return states.get(tid, "lost")

    def _account_of(self, pairs: Sequence[tuple[str, str]]) -> str | None:
        """The account of a message sent before messages named theirs, as its records say."""
        found = [a for a in self.store.accounts_of([t for t, _ in pairs]) if a is not None]
        return found[0] if found else None

    def _train_size(self, account: str) -> int:
        try:
            return self.trains.size(account, self.providers.get(account))
        except errors.ConfigurationError:
            return 0  # nothing is taken along: the run settles its claims as misconfigured

    def _sort_out(
        self, account: str, pairs: list[tuple[str, str]], results: list[Claim | str], now: float
    ) -> list[Claim]:
        """The claims the message took; an export a provider's stated time keeps is sent again
        for then, the rest are dropped (logged, boundedly)."""
        claims: list[Claim] = []
        dropped = 0
        for (ptid, ptoken), result in zip(pairs, results, strict=True):
            if not isinstance(result, str):
                claims.append(result)
            elif result.startswith("wait:"):
                # Too early for a provider's stated time: come back then, not after a rescue.
                self.send_poll(account, [(ptid, ptoken)], max(0.0, float(result[5:]) - now))
                log.info("poll deferred tracking_id=%s until=%s", ptid, result[5:])
            else:
                dropped += 1
                if dropped <= _LOGGED_DROPS:
                    log.log(_DROP_LEVELS.get(result, logging.INFO), _DROPPED, ptid, result, account)
        if dropped > _LOGGED_DROPS:
            log.debug("poll dropped %d more exports of this message", dropped - _LOGGED_DROPS)
        return claims

    def _bounded(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """No train we send names more than 1,000 exports (POLLER_TRAIN_MAX is 50 by default,
        a bulk request holds 100): a longer message is forged, and its tail is left to the
        sweep rather than to one long, loud run."""
        most = max(self.settings.train_max, _MOST_PER_MESSAGE)
        if len(pairs) > most:
            log.warning("poll message names %d exports; polling the first %d", len(pairs), most)
        return pairs[:most]

    def _poll_account(
        self, account: str, claims: list[Claim], due: list[str], now: float, lease_until: float
    ) -> dict[str, str]:
        try:
            provider = self.providers.get(account)
        except errors.ConfigurationError as exc:
            log.error("account misconfigured on this worker account=%s: %s", account, exc)
            return self.settler.settle(
                claims, dict.fromkeys(_ids(claims), errors.Misconfigured(str(exc)))
            )
        claims = claims + self.store.claim_due(
            account,
            claims[0].claim_id,
            now=now,
            lease_until=lease_until,
            due_by=now + self.settings.backoff_floor,
            limit=self.trains.size(account, provider) - len(claims),
            polled_before=now - self.settings.backoff_floor,  # POLLER_BACKOFF_FLOOR's promise
            candidates=due,
        )
        # An export whose last request timed out may trickle again: its neighbours are asked
        # and settled first, so none of them waits on it or is held back when it times out.
        fresh: list[Claim] = []
        slow: list[Claim] = []
        for claim in claims:
            (slow if timed_out(claim) else fresh).append(claim)
        states, asked = self._run_train(provider, account, fresh)
        if slow and any(isinstance(o, errors.TransportError) for o in asked.values()):
            # the provider just timed out on a healthy export: the slow ones wait with it
            return states | self.settler.settle(slow, self.trains.hold_back(account, slow))
        return states | self._run_train(provider, account, slow)[0]

    def _run_train(
        self, provider: Provider, account: str, claims: list[Claim]
    ) -> tuple[dict[str, str], dict[str, Outcome]]:
        """Ask and settle one train; what its time left unasked is passed on in new trains.
        Returns the new states and what the provider answered."""
        if not claims:
            return {}, {}
        states: dict[str, str] = {}

        def settle(outcomes: dict[str, Outcome]) -> None:
            ready = [c for c in claims if c.tracking_id in outcomes and c.tracking_id not in states]
            states.update(self.settler.settle(ready, outcomes) if ready else {})

        outcomes = self.trains.run(provider, account, claims, settle)
        settle(outcomes)
        unasked = [c for c in claims if c.tracking_id not in outcomes]
        if unasked:  # out of time: fan the rest out, in trains sized by what was measured
            self.store.release(unasked, rescue_at=clock.now() + self.settings.rescue_grace)
            pairs = [(c.tracking_id, c.fields["token"]) for c in unasked]
            trains = rules.chunks(pairs, self.trains.size(account, provider))
            self.settler.send_or_park(account, [(train, 0.0) for train in trains])
        return states, outcomes


def _ids(claims: list[Claim]) -> list[str]:
    return [c.tracking_id for c in claims]
