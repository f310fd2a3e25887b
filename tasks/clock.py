"""The one clock the engine reads; tests patch `tasks.clock.now` and nothing else."""

import time


def now() -> float:
    return time.time()
