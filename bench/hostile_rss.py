"""Worker memory under hostile answers: oversized, gzip-bomb, chunked and trickling bodies.

    .venv/bin/python bench/hostile_rss.py [--seconds 600] [--exports 8] [--json]

Goal (issue: hostile providers): a worker's RSS stays within 50 MB of where it starts while
every poll it makes gets one of these answers, over ten minutes. A private redis-server, a
worker (thread pool of 8) and beat run as subprocesses; the hostile provider is a Cometly-shaped
server in this process. Every export is re-polled about once a second for the whole run
(`POLLER_CONFIRM_REFUSALS` is high, so oversized answers never end an export), and the RSS of
the worker is sampled every 10 s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export_poller.processes import (  # noqa: E402
    exit_on_sigterm,
    start_beat,
    start_redis,
    start_worker,
    wait_until,
)

KINDS = ("oversized", "bomb", "chunked", "trickle", "healthy")
RUNNING = {"id": 1, "status": "processing", "message": "Export is being processed."}
BIG = json.dumps({**RUNNING, "pad": "x" * (3 * 1024 * 1024)}).encode()  # over the 2 MiB cap
BOMB = gzip.compress(gzip.compress(b'{"pad": "' + b"0" * (200 * 1024 * 1024) + b'"}'))
CHUNKED = json.dumps({**RUNNING, "pad": "y" * (1024 * 1024)}).encode()  # under the cap


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counts: dict[str, int] = dict.fromkeys(KINDS, 0)

    def log_message(self, *args: Any) -> None:
        """Quiet: the bench prints its own figures."""

    def do_GET(self) -> None:
        export_id = self.path.rsplit("/", 1)[-1]
        kind = KINDS[int(export_id) // 1000] if export_id.isdigit() else "healthy"
        Hostile.counts[kind] = Hostile.counts.get(kind, 0) + 1
        getattr(self, f"_{kind}", self._healthy)()

    def _send(self, body: bytes, **headers: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _healthy(self) -> None:
        self._send(json.dumps(RUNNING).encode())

    def _oversized(self) -> None:
        self._send(BIG)

    def _bomb(self) -> None:
        self._send(BOMB, Content_Encoding="gzip, gzip")

    def _chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(CHUNKED), 8192):
            piece = CHUNKED[start : start + 8192]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _trickle(self) -> None:
        body = json.dumps(RUNNING).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for byte in body:  # one byte a second: only the request deadline ends it
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(1.0)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """The worker hangs up on oversized and trickling answers: that is the point."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def environment(redis_url: str, base_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "POLLER_REDIS_URL": redis_url,
        "POLLER_KEY_PREFIX": "hostile",
        "POLLER_BACKOFF_INITIAL": "0.5",
        "POLLER_BACKOFF_MAX": "1",
        "POLLER_BACKOFF_FLOOR": "0.2",
        "POLLER_CONFIRM_REFUSALS": "1000000",
        "POLLER_SWEEP_INTERVAL": "1",
        "POLLER_RESCUE_GRACE": "6",
        "POLLER_LEASE_SECONDS": "30",
        "POLLER_HTTP_READ_TIMEOUT": "5",
        "POLLER_BREAKER_MIN_CALLS": "1000000",  # keep every answer coming: no breaker pause
        "POLLER_ACCOUNTS__COMETLY__PROVIDER": "cometly",
        "POLLER_ACCOUNTS__COMETLY__TOKEN": "bench-token",
        "POLLER_ACCOUNTS__COMETLY__BASE_URL": base_url,
    }


def track(env: dict[str, str], per_kind: int) -> None:
    os.environ.update(env)
    from export_poller import track_export
    from export_poller.processes import stand_in

    stand_in(env)  # tracked before the worker is ready: its accounts, as it will publish them

    for k in range(len(KINDS)):  # Cometly ids are numbers: the thousands say the kind
        for i in range(per_kind):
            track_export("cometly", str(k * 1000 + i), timeout=24 * 3600)


def run(seconds: float, per_kind: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="export-poller-hostile-"))
    server = QuietServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    redis_child = start_redis(workdir)
    env = environment(redis_child.extra["url"], f"http://127.0.0.1:{server.server_port}")
    worker = start_worker(env, workdir, concurrency=8)
    beat = start_beat(env, workdir)
    try:
        wait_until(lambda: "ready" in worker.output(), 60, "worker ready")
        track(env, per_kind)
        wait_until(lambda: sum(Hostile.counts.values()) >= len(KINDS) * per_kind, 60, "polls")
        samples = [rss_mb(worker.proc.pid)]
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(min(10.0, seconds))  # a sampling period, not synchronisation
            samples.append(rss_mb(worker.proc.pid))
        return {
            "seconds": seconds,
            "requests": dict(Hostile.counts),
            "rss_start_mb": round(samples[0], 1),
            "rss_max_mb": round(max(samples), 1),
            "rss_end_mb": round(samples[-1], 1),
            "rss_growth_mb": round(max(samples) - samples[0], 1),
        }
    finally:
        for child in (beat, worker, redis_child):
            child.stop()
        server.shutdown()


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--exports", type=int, default=8, help="exports per kind of answer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.seconds, args.exports)
    if args.json:
        print(json.dumps(result))
        return
    print(f"hostile answers for {result['seconds']:.0f} s: requests {result['requests']}")
    print(
        f"worker RSS: start {result['rss_start_mb']} MB, max {result['rss_max_mb']} MB, "
        f"end {result['rss_end_mb']} MB, growth {result['rss_growth_mb']} MB (goal <= 50)"
    )


if __name__ == "__main__":
    main()
