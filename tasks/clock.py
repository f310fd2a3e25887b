"""The one clock the engine reads; tests patch `export_poller.clock.now` and nothing else."""

import time


def now() -> float:
    return time.time()
