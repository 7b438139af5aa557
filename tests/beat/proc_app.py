"""The app beat and worker processes in tests/beat load (-A tests.beat.proc_app).

The environment picks the broker (CONVEYOR_BROKER_URL), the beat's name (BEAT_TEST_NAME, also
naming its queue), the lease (BEAT_TEST_LEASE) and the file the task writes to (BEAT_TEST_LOG).
"""

from __future__ import annotations

import os
import time

from conveyor import App, Broadcast, Queue, Task, crontab

NAME = os.environ.get("BEAT_TEST_NAME", "beat-proc")
LOG = os.environ.get("BEAT_TEST_LOG", os.devnull)


def make_app(name: str) -> App:
    """The app of beat ``name``: a 1 s entry to its own queue, and the seed's broadcast entry."""
    queue = f"beatq-{name}"
    return App(
        name,
        config={
            # The seed's broadcast entry (with an exchange name of its own per test).
            "task_queues": [Queue(queue), Broadcast(f"broadcast_tasks-{name}")],
            "beat_lease": float(os.environ.get("BEAT_TEST_LEASE", "5")),
            "beat_schedule": {
                "every-second": {
                    "task": "beat.record",
                    "schedule": 1.0,
                    "options": {"queue": queue},
                    # Every due time, even those a killed leader's successor sends late.
                    "catchup": "all",
                },
                "test-task": {
                    "task": "beat.record",
                    "schedule": crontab(minute=0, hour="*/3"),
                    "options": {"exchange": f"broadcast_tasks-{name}"},
                },
            },
        },
    )


app = make_app(NAME)


@app.task(name="beat.record", bind=True)
def record(self: Task) -> None:
    with open(LOG, "a") as f:
        f.write(f"{self.request.id} {self.request.hostname} {time.time():.3f}\n")
