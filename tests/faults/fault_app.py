"""The app the fault suite's worker processes load (-A tests.faults.fault_app).

Its broker comes from CONVEYOR_BROKER_URL; the queue it consumes from CONVEYOR_FAULTS_QUEUE (so
tests on the shared RabbitMQ never meet another test's messages), and its dead-letter queue is
that name plus ``.dead``.
"""

from __future__ import annotations

import os
import time

from conveyor import App, Queue

QUEUE = os.environ.get("CONVEYOR_FAULTS_QUEUE", "faults")

app = App(
    "faults",
    config={
        "task_queues": [Queue(QUEUE)],
        "task_default_queue": QUEUE,
        "task_dead_letter_queue": f"{QUEUE}.dead",
    },
)


@app.task(name="faults.record")
def record(label: str, path: str) -> None:
    """Append ``label`` to the file ``path``: the test reads which tasks ran, and how often."""
    with open(path, "a") as f:
        f.write(label + "\n")


@app.task(name="faults.echo")
def echo(label: str, path: str, payload: str) -> str:
    """Record ``label`` and return ``payload`` (a big one makes the worker write a big result)."""
    record(label, path)
    return payload


@app.task(name="faults.nap")
def nap(label: str, path: str, seconds: float) -> None:
    """Work for ``seconds``, then record ``label``: a stream slow enough to be cut mid-way."""
    time.sleep(seconds)
    record(label, path)
