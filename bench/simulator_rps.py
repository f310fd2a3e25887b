"""Requests per second the provider simulator sustains, per provider, over real HTTP.

    .venv/bin/python bench/simulator_rps.py [--requests 6000] [--processes 2] [--threads 4]
        [--client requests|http.client] [--providers cometly,saymon] [--url http://...]

By default the simulator runs in its own process (`python -m export_poller.providers.simulator`,
rate limits off) so that it has a GIL of its own; the load comes from `--processes` client
processes of `--threads` threads, each thread holding one keep-alive connection
(`requests.Session`, or a bare `http.client` connection, which costs the client far less CPU).
Every provider gets the same bounded number of status requests over a pool of never-finishing
jobs; the figure is
requests / (last answer - first request) over all clients.

ChaosSearch requests are signed once per job (AWS4Auth) and replayed, which SigV4 allows within
its 15-minute window: the server still verifies every signature, the client skips re-signing.
Client and server share this machine's cores, so the figures are a floor for the server.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests_aws4auth import AWS4Auth  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export_poller.providers.simulator.client import SimulatorClient  # noqa: E402
from export_poller.providers.simulator.options import PROVIDERS  # noqa: E402

TOKEN = "sim-token"
BASIC = "Basic c2ltOnNpbS1wYXNzd29yZA=="  # sim:sim-password

Call = tuple[str, str, bytes | None, dict[str, str]]
"""method, path, body, headers of one ready-to-send status request."""


@dataclass(frozen=True)
class Slice:
    """One client process's share of the load for one provider."""

    url: str
    calls: tuple[Call, ...]
    count: int
    threads: int
    client: str


@dataclass(frozen=True)
class Result:
    started: float
    ended: float
    done: int
    failed: int


def build_calls(url: str, provider: str, ids: list[str], batch: int) -> list[Call]:
    """The status request for each job, as that provider's real API expects it."""
    if provider == "chaossearch":
        auth = AWS4Auth("SIMACCESSKEY", "sim-secret-key", "us-east-1", "s3")
        calls: list[Call] = []
        for job_id in ids:
            prepared = requests.Request(
                "POST", f"{url}/bulkexport/status", json={"id": job_id}
            ).prepare()
            signed = auth(prepared)
            calls.append(("POST", "/bulkexport/status", signed.body, dict(signed.headers)))
        return calls
    if provider == "saymon":
        return [("GET", f"/node/api/bulk/{i}/status", None, {"Authorization": BASIC}) for i in ids]
    sbg = {"X-SBG-Auth-Token": TOKEN}
    if provider == "biodatacatalyst":
        return [("GET", f"/v2/storage/exports/{i}", None, sbg) for i in ids]
    if provider == "cgc":
        json_headers = {**sbg, "Content-Type": "application/json"}
        batches = [ids[n : n + batch] for n in range(0, len(ids), batch)]
        return [
            ("POST", "/v2/bulk/storage/exports/get", _json({"export_ids": b}), json_headers)
            for b in batches
        ]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    return [("GET", f"/public-api/v1/events/exports/{i}", None, bearer) for i in ids]


def _json(payload: object) -> bytes:
    import json

    return json.dumps(payload).encode()


def _requests_sender(url: str) -> tuple[Callable[[Call], int], Callable[[], None]]:
    session = requests.Session()

    def send(call: Call) -> int:
        method, path, body, headers = call
        return session.request(method, url + path, data=body, headers=headers).status_code

    return send, session.close


def _http_client_sender(url: str) -> tuple[Callable[[Call], int], Callable[[], None]]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)

    def send(call: Call) -> int:
        method, path, body, headers = call
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status

    return send, connection.close


def _thread_load(work: Slice, count: int, offset: int, failures: list[int]) -> None:
    make = _requests_sender if work.client == "requests" else _http_client_sender
    send, close = make(work.url)
    failed = 0
    try:
        for n in range(count):
            failed += send(work.calls[(offset + n) % len(work.calls)]) != 200
    finally:
        close()
    failures.append(failed)


def run_slice(work: Slice) -> Result:
    """Runs in a client process: `work.threads` threads share `work.count` requests."""
    failures: list[int] = []
    base, extra = divmod(work.count, work.threads)
    threads = [
        threading.Thread(target=_thread_load, args=(work, base + (i < extra), i * 97, failures))
        for i in range(work.threads)
    ]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Result(started, time.time(), work.count, sum(failures))


def _warm_up(_: int) -> float:
    return time.time()


@contextmanager
def simulator(url: str | None, threads: int) -> Iterator[str]:
    """Use the given simulator, or run one in a child process with rate limits off."""
    if url:
        yield url.rstrip("/")
        return
    command = [
        sys.executable,
        "-m",
        "export_poller.providers.simulator",
        "--port",
        "0",
        "--threads",
        str(threads),
    ]
    command += ["--cometly-limit", "0", "--sbg-limit", "0"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            yield process.stdout.readline().split()[-1]
        finally:
            process.terminate()
            process.wait(timeout=10)


def measure(pool: ProcessPoolExecutor, url: str, provider: str, args: argparse.Namespace) -> Result:
    with SimulatorClient(url) as control:
        specs = [{"provider": provider, "pending_polls": 0, "running_polls": 10**9}] * args.jobs
        ids = [str(job_id) for job_id in control.create_jobs(specs)]
    calls = tuple(build_calls(url, provider, ids, args.cgc_batch))
    share = args.requests // args.processes
    work = [Slice(url, calls, share, args.threads, args.client) for _ in range(args.processes)]
    results = list(pool.map(run_slice, work))
    return Result(
        started=min(r.started for r in results),
        ended=max(r.ended for r in results),
        done=sum(r.done for r in results),
        failed=sum(r.failed for r in results),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Requests per second of the provider simulator.")
    add = parser.add_argument
    add("--url", help="an already running simulator (start it with rate limits off)")
    add("--requests", type=int, default=6000, help="status requests per provider")
    add("--processes", type=int, default=2, help="client processes")
    add("--threads", type=int, default=4, help="threads (connections) per client process")
    add("--client", choices=["requests", "http.client"], default="requests")
    add("--server-threads", type=int, default=8, help="waitress worker threads")
    add("--jobs", type=int, default=500, help="jobs per provider")
    add("--cgc-batch", type=int, default=1, help="ids per CGC bulk request")
    add("--providers", default=",".join(PROVIDERS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    providers = [name.strip() for name in args.providers.split(",") if name.strip()]
    with (
        simulator(args.url, args.server_threads) as url,
        ProcessPoolExecutor(args.processes) as pool,
    ):
        list(pool.map(_warm_up, range(args.processes)))
        print(f"simulator {url}; {args.processes} x {args.threads} {args.client} clients")
        print(f"{'provider':<16} {'requests':>9} {'seconds':>8} {'req/s':>8} {'non-200':>8}")
        rates = []
        for provider in providers:
            result = measure(pool, url, provider, args)
            seconds = result.ended - result.started
            rates.append(result.done / seconds)
            print(
                f"{provider:<16} {result.done:>9} {seconds:>8.2f} {rates[-1]:>8.0f} "
                f"{result.failed:>8}"
            )
        print(f"{'mean':<16} {'':>9} {'':>8} {sum(rates) / len(rates):>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
