"""Issue 21, written from the issue text, the providers' API documents (seeds) and the README only.

Every test runs a private ``redis-server``, its own key prefix and queue, a real worker and beat
(subprocesses) and a fake provider over real HTTP (``harness_issue21``):

1. BioData Catalyst (Seven Bridges) ``GET /v2/storage/exports/{id}``: seed 002 lists
   ``Content-type: application/json`` as a required header. The fake refuses any request without
   it, as the API refuses a bad request (400 with the documented ``{status, code, message,
   more_info}`` body), and otherwise walks the export PENDING -> RUNNING -> COMPLETED. The export
   ends with exactly one ``on_complete``; every request the fake received carried the header,
   ``refresh_export`` (another Seven Bridges request) included.
2. CGC bulk (``POST /v2/bulk/storage/exports/get``): one id is gone (answered per item, in seed
   004's ``items`` list, as ``{"error": {status 404, ...}}``), its five neighbours are healthy,
   and whole-request failures (429 with a 1 s wait, an off-spec body, a 503 maintenance answer,
   a 503 from a proxy) are interleaved between the not-found answers. With
   ``POLLER_CONFIRM_REFUSALS=3`` the gone export ends ``failed`` after exactly three bulk answers
   naming it as not found, counted in the fake, and is never asked again; one callback each.
3. Freeze: one Cometly export's status answer trickles a byte a second (in flight until the
   client gives up), beside healthy exports of the same account. Healthy exports tracked at the
   start, and one tracked 20 s or more later while a trickling request is in flight, each get
   exactly one ``on_complete`` within 60 s of being tracked (4 worker threads, beat running);
   and, from the README's promise that "no answer waits on one that may trickle again", each
   callback comes within 5 s of the provider's "completed" answer. Two variants: every setting
   at its default, and one timed so that the late export's follow-up falls due with the
   trickling export's retry.

Written without reading the service's code: from ``/work/notes/issue21.md``, the seeds and the
README.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from export_poller.processes import stand_in
from tests.integration.independent.harness_issue21 import (
    COMETLY_PATH,
    FAST,
    FakeServer,
    bearer,
    cometly_body,
    has_json_content_type,
    running_stack,
    sb_error,
    sb_resource,
    send,
    wait_or_give_up,
    wait_until,
)

# --------------------------------------------------------------------------------------------
# 1. BioData Catalyst: Content-type on every request

SB_PATH = re.compile(r"^/v2/storage/exports/([^/?]+)$")


@dataclass
class SbRequest:
    t: float
    export_id: str
    content_type: str | None
    status: int


class FakeBioDataCatalyst:
    """``GET /v2/storage/exports/{id}`` with ``X-SBG-Auth-Token``; refuses a missing Content-type.

    An export answers PENDING on its first accepted request, RUNNING on the next ``running``
    ones, then COMPLETED. A refused request does not advance it.
    """

    def __init__(self, token: str, running: int = 2) -> None:
        self.token = token
        self.running = running
        self.lock = threading.Lock()
        self.log: list[SbRequest] = []
        self.answered: Counter[str] = Counter()
        self.server = FakeServer(self.handle)
        self.base_url = self.server.base_url

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        m = SB_PATH.match(h.path.split("?", 1)[0])
        if h.command != "GET" or not m:
            send(h, 404, sb_error(404, 9404, "Requested resource not found"))
            return
        export_id = m.group(1)
        with self.lock:
            if not has_json_content_type(h):
                status, answer = 400, sb_error(400, 9000, "Bad request: Content-type is required")
            elif h.headers.get("X-SBG-Auth-Token") != self.token:
                status, answer = 401, sb_error(401, 0, "Unauthorized")
            else:
                n = self.answered[export_id]
                self.answered[export_id] += 1
                state = "pending" if n == 0 else "running" if n <= self.running else "completed"
                status, answer = 200, sb_resource(self.base_url, export_id, state)
            self.log.append(
                SbRequest(time.time(), export_id, h.headers.get("Content-Type"), status)
            )
        send(h, status, answer)

    def requests(self, export_id: str) -> list[SbRequest]:
        with self.lock:
            return [r for r in self.log if r.export_id == export_id]

    def stop(self) -> None:
        self.server.stop()


def _get(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=headers, method="GET")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def biodata() -> Iterator[FakeBioDataCatalyst]:
    fake = FakeBioDataCatalyst(token=f"sbtok{uuid.uuid4().hex}")
    try:
        yield fake
    finally:
        fake.stop()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_biodatacatalyst_get_carries_content_type_and_completes_once(
    tmp_path: Path, biodata: FakeBioDataCatalyst
) -> None:
    fake = biodata
    # The fake refuses as documented: without the header, a 400 with the Seven Bridges error
    # body; with it, the export document. (An id of its own, so the tracked one is untouched.)
    url = f"{fake.base_url}/v2/storage/exports/selfcheck0000000000000000000000"
    status, body = _get(url, {"X-SBG-Auth-Token": fake.token})
    assert status == 400 and set(body) == {"status", "code", "message", "more_info"}, body
    status, body = _get(url, {"X-SBG-Auth-Token": fake.token, "Content-type": "application/json"})
    assert status == 200 and body["state"] == "PENDING", body

    export_id = "crand0mKvetGpxIjo088DnMXEg0t6srX"  # seed 002's example id
    account = {"PROVIDER": "biodatacatalyst", "TOKEN": fake.token, "BASE_URL": fake.base_url}
    with running_stack(tmp_path, {"bdc": account}, dict(FAST)) as stack:
        stack.start_worker(concurrency=4)
        stack.start_beat()
        [(tid, _)] = stack.track(
            [
                {
                    "provider": "biodatacatalyst",
                    "account": "bdc",
                    "export_id": export_id,
                    "timeout": 45,
                }
            ]
        )
        # Wait for the export's callback (either kind); on the code before the fix there may be
        # none within the export's 45 s deadline, so do not fail here: the facts below say why.
        wait_or_give_up(lambda: bool(stack.callbacks_by_export().get(export_id)), 70)
        counts = stack.watch_for_duplicates(8)
        callbacks = stack.callbacks_by_export().get(export_id, [])
        record = stack.records([tid])[tid]
        log = fake.requests(export_id)
        facts = (
            f"{len(log)} requests, statuses {[r.status for r in log]}, Content-Type values "
            f"{sorted({str(r.content_type) for r in log})}; record state {record['state']!r}, "
            f"error {record.get('error')}; callbacks {[c['kind'] for c in callbacks]}"
        )
        print(facts)
        assert log, f"the provider was never asked\n{stack.diag()}"
        missing = [r for r in log if r.status == 400]
        assert not missing, (
            f"{len(missing)} of {len(log)} GETs lacked 'Content-type: application/json' "
            f"(seed 002: required) and were refused; {facts}"
        )
        assert [c["kind"] for c in callbacks] == ["on_complete"], facts
        assert counts[export_id] == 1, f"callbacks per export after a quiet period: {counts}"
        assert record["state"] == "completed", facts
        assert callbacks[0]["status_state"] == "completed", callbacks[0]
        # It was walked through the documented states: PENDING, RUNNING (x2), COMPLETED.
        assert sum(r.status == 200 for r in log) >= fake.running + 2, facts

        # refresh_export asks the provider again: another Seven Bridges request, same header.
        refreshed = stack.refresh([tid])
        assert refreshed[0]["ok"], f"refresh_export failed: {refreshed}"
        after = fake.requests(export_id)
        assert len(after) > len(log), "refresh_export sent no request"
        assert all(r.status == 200 for r in after[len(log) :]), (
            f"refresh_export's request was refused: {[r.content_type for r in after[len(log) :]]}"
        )


# --------------------------------------------------------------------------------------------
# 2. CGC bulk: whole-request failures do not restart the refusal count

CGC_PATH = "/v2/bulk/storage/exports/get"
GONE = "gonEtre6CG411ac0SbNkaVA0SNRKGONE"
NEIGHBOURS = [f"gET2tre6CG411ac0SbNkaVA0SNRK{i:04d}" for i in range(5)]
NEIGHBOUR_RUNNING = 20  # successful answers before a neighbour completes: it outlives the gone one

# After the k-th not-found answer for GONE, the next requests naming it (with neighbours) fail
# as a whole, in this order. With 3 confirmations, the fix ends GONE at the third not-found
# answer, having seen the failures after the first and second; the rest are there so that code
# restarting its count at each failure shows how many answers it needed.
FAILURE_PLAN = {
    1: ["429", "offspec"],
    2: ["503-maintenance", "503-proxy"],
    3: ["offspec"],
    4: ["503-maintenance"],
    5: ["429"],
}


@dataclass
class BulkRequest:
    t: float
    ids: list[str]
    content_type_ok: bool
    outcome: str  # "answered", a failure kind from FAILURE_PLAN, or "refused"


class FakeCgcBulk:
    """Seed 004's bulk call: ``{"items": [{"resource": ...} | {"error": ...}, ...]}`` in order.

    GONE is answered per item as not found; each neighbour walks PENDING, RUNNING (x
    NEIGHBOUR_RUNNING), COMPLETED on its successful answers.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.log: list[BulkRequest] = []
        self.answered: Counter[str] = Counter()
        self.not_found = 0
        self.pending_failures: collections.deque[str] = collections.deque()
        self.server = FakeServer(self.handle)
        self.base_url = self.server.base_url

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        if h.command != "POST" or h.path.split("?", 1)[0] != CGC_PATH:
            send(h, 404, sb_error(404, 9404, "Requested resource not found"))
            return
        ctype_ok = has_json_content_type(h)
        try:
            ids = [str(i) for i in json.loads(body)["export_ids"]]
        except (ValueError, KeyError, TypeError):
            ids = []
        with self.lock:
            status, answer, headers, outcome = self._answer(h, ids, ctype_ok)
            self.log.append(BulkRequest(time.time(), ids, ctype_ok, outcome))
        send(h, status, answer, headers)

    def _answer(
        self, h: BaseHTTPRequestHandler, ids: list[str], ctype_ok: bool
    ) -> tuple[int, Any, dict[str, str], str]:
        if not ctype_ok or not ids:
            return 400, sb_error(400, 9000, "Bad request"), {}, "refused"
        if h.headers.get("X-SBG-Auth-Token") != self.token:
            return 401, sb_error(401, 0, "Unauthorized"), {}, "refused"
        # A failure of the whole request: only on a request that names GONE among others, so it
        # is plainly not GONE's own answer (a bisected half that still fails would be).
        if GONE in ids and len(ids) > 1 and self.pending_failures:
            kind = self.pending_failures.popleft()
            status, answer, headers = self._failure(kind)
            return status, answer, headers, kind
        items: list[dict[str, Any]] = []
        for export_id in ids:
            if export_id == GONE:
                self.not_found += 1
                self.pending_failures.extend(FAILURE_PLAN.get(self.not_found, []))
                items.append({"error": sb_error(404, 9404, "Requested export not found")})
                continue
            n = self.answered[export_id]
            self.answered[export_id] += 1
            state = "pending" if n == 0 else "running" if n <= NEIGHBOUR_RUNNING else "completed"
            items.append({"resource": sb_resource(self.base_url, export_id, state)})
        return 200, {"items": items}, {}, "answered"

    @staticmethod
    def _failure(kind: str) -> tuple[int, Any, dict[str, str]]:
        if kind == "429":
            return 429, sb_error(429, 1000, "Rate limit exceeded"), {"Retry-After": "1"}
        if kind == "503-maintenance":
            return 503, sb_error(503, 0, "The platform is under maintenance"), {}
        if kind == "503-proxy":
            return (
                503,
                b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
                {},
            )
        return 200, b"<html><body>Upstream returned an invalid response</body></html>", {}

    def gone_sequence(self) -> list[str]:
        """What each request naming GONE got: NF (a not-found item) or a failure kind."""
        with self.lock:
            return [
                "NF" if r.outcome == "answered" else r.outcome for r in self.log if GONE in r.ids
            ]

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def cgc() -> Iterator[FakeCgcBulk]:
    fake = FakeCgcBulk(token=f"cgctok{uuid.uuid4().hex}")
    try:
        yield fake
    finally:
        fake.stop()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_cgc_gone_id_fails_after_exactly_three_not_found_answers_despite_failures(
    tmp_path: Path, cgc: FakeCgcBulk
) -> None:
    fake = cgc
    account = {"PROVIDER": "cgc", "TOKEN": fake.token, "BASE_URL": fake.base_url}
    settings = {**FAST, "POLLER_CONFIRM_REFUSALS": "3"}
    with running_stack(tmp_path, {"cgc": account}, settings) as stack:
        ids = [*NEIGHBOURS[:2], GONE, *NEIGHBOURS[2:]]
        # Tracked before the worker starts, so all six are due together and share requests.
        stand_in(stack.env())  # the roster entry of the worker started below
        tracked = stack.track([{"provider": "cgc", "export_id": e, "timeout": 180} for e in ids])
        tids = dict(zip(ids, (tid for tid, _ in tracked), strict=True))
        stack.start_worker(concurrency=4)
        stack.start_beat()

        def everyone_called_back() -> bool:
            seen = stack.callbacks_by_export()
            return all(e in seen for e in ids)

        wait_or_give_up(everyone_called_back, 170)  # the facts below say what happened
        counts = stack.watch_for_duplicates(8)
        callbacks = stack.callbacks_by_export()
        records = stack.records(list(tids.values()))
        gone_record = records[tids[GONE]]
        sequence = fake.gone_sequence()
        kinds = {e: [c["kind"] for c in cbs] for e, cbs in callbacks.items()}
        facts = (
            f"requests naming the gone id got {sequence}; not-found answers {fake.not_found}; "
            f"gone export state {gone_record['state']!r}, error {gone_record.get('error')}; "
            f"callbacks {kinds}; "
            f"{len(fake.log)} bulk requests, sizes {[len(r.ids) for r in fake.log][:40]}"
        )
        print(facts)

        # Seed 004: Content-Type application/json is a required header of the bulk call too.
        bad = [r for r in fake.log if not r.content_type_ok]
        assert not bad, f"{len(bad)} bulk requests lacked Content-Type: application/json; {facts}"
        # The scenario happened: the gone id was answered not found at least three times, with
        # failures of the whole request between the first and the third. Where they land
        # (between the first and second, or second and third) depends on how the service splits
        # a failed bulk request, which the fake does not control: a failure anywhere between
        # them resets a count that restarts on failures, so one is enough to tell.
        nf = [i for i, s in enumerate(sequence) if s == "NF"]
        assert len(nf) >= 3 and nf[2] - nf[0] > 2, f"the scenario did not happen; {facts}"

        assert [c["kind"] for c in callbacks.get(GONE, [])] == ["on_failure"], facts
        assert gone_record["state"] == "failed", facts
        assert (gone_record.get("error") or {}).get("kind") == "not_found", facts
        assert fake.not_found == 3, (
            f"the gone export needed {fake.not_found} not-found answers, not 3 "
            f"(POLLER_CONFIRM_REFUSALS=3): whole-request failures restarted the count; {facts}"
        )
        assert sequence[nf[2] + 1 :] == [], f"asked again after it failed; {facts}"
        for e in NEIGHBOURS:
            assert [c["kind"] for c in callbacks.get(e, [])] == ["on_complete"], (e, facts)
            assert records[tids[e]]["state"] == "completed", (e, facts)
        assert all(n == 1 for n in counts.values()) and len(counts) == len(ids), counts


# --------------------------------------------------------------------------------------------
# 3. Freeze: a trickling answer does not stop a healthy neighbour's polls

TRICKLE_ID = "7000"
EARLY = {str(7001 + i): 1 + i % 2 for i in range(6)}  # export id -> polls until completed
LATE_ID = "7101"  # needs two polls: the freeze left such an export polled once
LATE_AFTER = 20.0
WITHIN = 60.0
ANSWER_TO_CALLBACK = 5.0  # s from the provider's "completed" to the callback


class FakeCometlyTrickle:
    """Seed 003's status call. TRICKLE_ID's answer: headers at once, then a byte a second.

    Any other known export answers ``queued`` until its last poll, which answers ``completed``.
    """

    def __init__(self, token: str, polls: dict[str, int]) -> None:
        self.token = token
        self.polls = dict(polls)
        self.lock = threading.Lock()
        self.answered: Counter[str] = Counter()
        self.poll_times: dict[str, list[float]] = collections.defaultdict(list)
        self.trickles: list[list[float]] = []  # [start, end] of each trickling answer
        self.inflight = 0
        self.server = FakeServer(self.handle)
        self.base_url = self.server.base_url

    def add(self, export_id: str, polls: int) -> None:
        with self.lock:
            self.polls[export_id] = polls

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        m = COMETLY_PATH.match(h.path.split("?", 1)[0])
        if h.command != "GET" or not m:
            send(h, 404, {"message": "Not found"})
            return
        if bearer(h) != self.token:
            send(h, 401, {"message": "Missing or invalid API key"})
            return
        export_id = m.group(1)
        if export_id == TRICKLE_ID:
            self._trickle(h)
            return
        with self.lock:
            self.poll_times[export_id].append(time.time())
            total = self.polls.get(export_id)
            n = self.answered[export_id] = self.answered[export_id] + 1
        if total is None:
            send(h, 404, {"message": "Export not found or belongs to a different space"})
            return
        send(h, 200, cometly_body(export_id, "completed" if n >= total else "queued"))

    def _trickle(self, h: BaseHTTPRequestHandler) -> None:
        data = json.dumps(cometly_body(TRICKLE_ID, "processing")).encode()
        span = [time.time(), 0.0]
        with self.lock:
            self.poll_times[TRICKLE_ID].append(span[0])
            self.trickles.append(span)
            self.inflight += 1
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.flush()
            for i in range(len(data)):
                if self.server.stopping.wait(1.0):
                    break
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
        except OSError:
            pass  # the client gave up on it, as it should
        finally:
            with self.lock:
                self.inflight -= 1
                span[1] = time.time()
            h.close_connection = True

    def trickle_age(self) -> float | None:
        """Seconds since the trickling answer now in flight started (None: none in flight)."""
        with self.lock:
            open_spans = [a for a, b in self.trickles if not b]
        return time.time() - max(open_spans) if open_spans else None

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def trickle() -> Iterator[FakeCometlyTrickle]:
    fake = FakeCometlyTrickle(token=f"ctok{uuid.uuid4().hex}", polls=EARLY)
    try:
        yield fake
    finally:
        fake.stop()


# How the late export is tracked, 20 s or more after the others, relative to the trickling
# request then in flight (its age, in seconds, when ``track_export`` is called):
# * "defaults": every setting at its default (HTTP timeouts 30 s, backoff 10 s x2, sweep 5 s);
#   tracked at 20 s, mid-trickle, so the late export's follow-up falls due around the time the
#   trickling export's retry does, or not, as the jitter has it.
# * "retry-aligned": quick backoff (1-2 s, sweep 1 s) and an 8 s read timeout (so an 8 s total
#   timeout); tracked 7.2-7.6 s into a trickling request, so the late export's follow-up falls due
#   within a second or two of the trickling export's retry and may ride the same train: the
#   README promises the rest of a train is not queued behind an answer that may trickle again.
FREEZE_VARIANTS = {
    "defaults": ({}, (0.0, 26.0)),
    "retry-aligned": ({**FAST, "POLLER_HTTP_READ_TIMEOUT": "8"}, (7.2, 7.6)),
}


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("variant", list(FREEZE_VARIANTS))
def test_trickling_export_does_not_freeze_healthy_exports_of_its_account(
    tmp_path: Path, trickle: FakeCometlyTrickle, variant: str
) -> None:
    fake = trickle
    fake.add(LATE_ID, 2)
    settings, (age_lo, age_hi) = FREEZE_VARIANTS[variant]
    account = {"PROVIDER": "cometly", "TOKEN": fake.token, "BASE_URL": fake.base_url}
    with running_stack(tmp_path, {"space": account}, dict(settings)) as stack:
        stack.start_worker(concurrency=4)
        stack.start_beat()
        items = [{"provider": "cometly", "account": "space", "export_id": TRICKLE_ID}]
        items += [{"provider": "cometly", "account": "space", "export_id": e} for e in EARLY]
        tracked = stack.track(items)
        tracked_at = {e: t for e, (_, t) in zip([TRICKLE_ID, *EARLY], tracked, strict=True)}
        start = tracked_at[TRICKLE_ID]

        track_late = stack.track_on_signal(
            [{"provider": "cometly", "account": "space", "export_id": LATE_ID}]
        )

        def late_moment() -> bool:
            age = fake.trickle_age()
            return time.time() >= start + LATE_AFTER and age is not None and age_lo <= age <= age_hi

        wait_until(
            late_moment,
            90,
            f"a trickling request {age_lo}-{age_hi} s old, 20 s or more after the start",
            stack.diag,
            interval=0.02,
        )
        age_at_late = fake.trickle_age()
        [(_, tracked_at[LATE_ID])] = track_late()
        healthy = [*EARLY, LATE_ID]

        def all_done() -> bool:
            seen = stack.callbacks_by_export()
            return all(e in seen for e in healthy)

        deadline = tracked_at[LATE_ID] + WITHIN - time.time()
        wait_or_give_up(all_done, max(1.0, deadline))  # the facts below say which
        counts = stack.watch_for_duplicates(6)
        callbacks = stack.callbacks_by_export()
        polls = {e: [round(t - start, 2) for t in fake.poll_times.get(e, [])] for e in healthy}
        with fake.lock:
            spans = [list(span) for span in fake.trickles]
        late_by = {
            e: round(callbacks[e][0]["t"] - tracked_at[e], 1) if e in callbacks else None
            for e in healthy
        }
        facts = (
            f"[{variant}] seconds from tracking to callback {late_by}; poll times (s after "
            f"start) {polls}; trickling answers [start, end] (s, as the fake saw them) "
            f"{[[round(a - start, 1), round(b - start, 1) if b else None] for a, b in spans]}; "
            f"late export tracked at {tracked_at[LATE_ID] - start:.1f} s (track_export called "
            f"{age_at_late:.1f} s into a trickling request)"
        )
        print(facts)

        stuck = [e for e in healthy if late_by[e] is None or late_by[e] > WITHIN]
        assert not stuck, (
            f"healthy exports {stuck} got no callback within {WITHIN:.0f} s of being tracked "
            f"beside a trickling export of their account; {facts}"
        )
        for e in healthy:
            assert [c["kind"] for c in callbacks[e]] == ["on_complete"], (e, facts)
            assert counts[e] == 1, (e, counts)
        assert TRICKLE_ID not in callbacks, callbacks.get(TRICKLE_ID)
        # README (Known limits, waves): "An export whose last request timed out is asked in a
        # wave of its own, so no answer waits on one that may trickle again." So once the
        # provider has answered "completed", the callback does not wait out a trickle.
        held = {
            e: round(callbacks[e][0]["t"] - fake.poll_times[e][-1], 1)
            for e in healthy
            if callbacks[e][0]["t"] - fake.poll_times[e][-1] > ANSWER_TO_CALLBACK
        }
        assert not held, (
            f"the callbacks of {sorted(held)} came {held} s after the provider answered "
            f"'completed' (bound {ANSWER_TO_CALLBACK:.0f} s): their answers waited on the "
            f"trickling export's request; {facts}"
        )
