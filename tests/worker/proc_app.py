"""The app that real worker processes in tests/worker and tests/cli load (-A tests.worker.proc_app).

The broker comes from CONVEYOR_BROKER_URL, as for any conveyor app; results from
CONVEYOR_RESULT_BACKEND when a test sets it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from conveyor import App, Broadcast, Queue, Task

CONFIG = {
    "task_default_queue": "default",
    "task_queues": [Queue("default", max_priority=10), Broadcast("everyone")],
    "task_track_started": True,
}

app = App("proc", config=CONFIG)


@app.task(name="proc.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="proc.async_add")
async def async_add(x: int, y: int) -> int:
    return x + y


@app.task(name="proc.slow", bind=True)
def slow(self: Task, seconds: float, marker: str) -> str:
    """Leave a marker file saying who started, then work for ``seconds``."""
    Path(marker).write_text(f"{self.request.hostname} {os.getpid()}\n")
    time.sleep(seconds)
    assert self.request.hostname is not None
    return self.request.hostname


@app.task(name="proc.record")
def record(label: str, log: str) -> None:
    with open(log, "a") as f:
        f.write(label + "\n")


@app.task(name="proc.whoami", bind=True)
def whoami(self: Task) -> str:
    assert self.request.hostname is not None
    return self.request.hostname


@app.task(name="proc.flaky", bind=True, max_retries=5)
def flaky(self: Task, fail_times: int) -> int:
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.05)
    return self.request.retries


@app.task(name="proc.overrun", time_limit=0.3)
def overrun() -> None:
    time.sleep(10)


@app.task(name="proc.cpu", time_limit=10)
def cpu(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total
