"""What it costs to ask, with the Redis broker, whether a callback queue has a consumer.

    .venv/bin/python bench/consumer_check.py [--rounds 5]

Starts a private redis-server and one worker consuming `export-poller`, then times the one way
Celery offers to learn who consumes a queue, `inspect().active_queues()` (a broadcast through
the workers' remote-control queues): for a consumed queue and for one nobody consumes, with the
default wait for every worker and with `limit=1` (return at the first reply). A cheap Redis read
(`LLEN` of the queue and its kombu binding) is timed beside it, to show it says nothing about
consumers. This decides whether the dispatch path can check each callback's queue.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export_poller.processes import start_redis, start_worker, wait_until  # noqa: E402


def timed(call: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, result


def consumed(replies: object, queue: str) -> bool:
    if not isinstance(replies, dict):
        return False
    return any(q.get("name") == queue for queues in replies.values() for q in queues)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="consumer-check-"))
    redis_child = start_redis(workdir)
    url = redis_child.extra["url"]
    os.environ.update({"POLLER_REDIS_URL": url, "POLLER_KEY_PREFIX": "bench"})
    worker = start_worker(dict(os.environ), workdir, concurrency=2)
    try:
        wait_until(lambda: "ready" in worker.output(), 60, "the worker")
        import redis

        from export_poller.celery import app

        r = redis.Redis.from_url(url)
        for queue in ("export-poller", "nobody-consumes-this"):
            for limit in (None, 1):
                ms, replies = timed(
                    lambda limit=limit: app.control.inspect(
                        timeout=1.0, limit=limit
                    ).active_queues(),
                    args.rounds,
                )
                print(
                    f"inspect active_queues queue={queue:<22} limit={limit!s:<4} "
                    f"median {ms:7.1f} ms  consumed={consumed(replies, queue)}"
                )
            ms, _ = timed(
                lambda queue=queue: (r.llen(queue), r.exists(f"_kombu.binding.{queue}")),
                args.rounds,
            )
            print(f"LLEN + binding          queue={queue:<22}            median {ms:7.3f} ms")
    finally:
        worker.stop()
        redis_child.stop()


if __name__ == "__main__":
    main()
