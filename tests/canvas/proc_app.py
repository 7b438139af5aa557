"""The app real worker processes load in the workflow fault tests (-A tests.canvas.proc_app).

Broker and results come from CONVEYOR_BROKER_URL and CONVEYOR_RESULT_BACKEND, the queue from
WF_QUEUE (a fresh one per test on a shared broker).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from conveyor import App

app = App(
    "wfproc",
    config={"task_acks_late": True, "task_default_queue": os.environ.get("WF_QUEUE", "default")},
)


@app.task(name="wfproc.value")
def value(x: int) -> int:
    return x


@app.task(name="wfproc.slow")
def slow(x: int, started: str) -> int:
    """Mark that it started (a file), then take long enough to be killed mid-run."""
    Path(started).write_text("started")
    time.sleep(3.0)
    return x


@app.task(name="wfproc.body")
def body(values: list[int], runs: str) -> list[int]:
    """Append one line per run to ``runs``: the test counts the body's runs."""
    with open(runs, "a") as out:
        out.write(f"{values}\n")
    return values
