"""The app that tests/worker/test_poison.py's worker processes load (-A tests.worker.poison_app).

The broker comes from CONVEYOR_BROKER_URL; the dead-letter queue's name from
CONVEYOR_TEST_DEAD_LETTERS, so that tests on a shared RabbitMQ do not read each other's.
"""

from __future__ import annotations

import os

from conveyor import App

app = App(
    "poison",
    config={"task_dead_letter_queue": os.environ.get("CONVEYOR_TEST_DEAD_LETTERS", "dead_letter")},
)


@app.task(name="poison.record")
def record(label: str, log: str) -> None:
    with open(log, "a") as f:
        f.write(label + "\n")
