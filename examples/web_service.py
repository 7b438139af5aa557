"""The web service from the seeds: its own codebase, its own worker, its own queue.

It never imports the remote service: it sends ``remote.*`` tasks by name, and ``task_routes``
sends them to ``remote_queue``, which only the remote worker consumes. Run its worker with::

    conveyor -A web_service worker -Q web_queue,broadcast --hostname web@%h

The broker comes from ``CONVEYOR_BROKER_URL`` (default: the SQLite file in the user's state
directory, which every service of that user on the machine shares).
"""

from __future__ import annotations

import itertools
import os
import time

from conveyor import App, Broadcast, Queue, Task

config = {
    "task_queues": [
        Queue("web_queue", max_priority=10),
        Queue("remote_queue", max_priority=10),
        Broadcast("broadcast"),
    ],
    "task_routes": {
        "web.*": {"queue": "web_queue"},
        "remote.*": {"queue": "remote_queue"},
        "status.*": {"queue": "broadcast"},
    },
}

app = App("web", config=config)

_run_order = itertools.count(1)


@app.task(name="web.render_page")
def render_page(page: str) -> str:
    """Render a page (the seeds' web-side task)."""
    return f"<h1>{page}</h1>"


@app.task(name="web.warm_up")
def warm_up(seconds: float) -> str:
    """Keep the web worker busy for a moment, so a burst queues up behind it."""
    time.sleep(seconds)
    return "warm"


@app.task(name="web.record")
def record(label: str) -> dict[str, object]:
    """Return the order this task ran in on this worker: shows priorities at work."""
    return {"label": label, "ran": next(_run_order)}


@app.task(name="status.report", bind=True)
def report(self: Task) -> dict[str, object]:
    """Broadcast target: every worker that consumes ``broadcast`` answers for itself."""
    return {"service": "web", "hostname": self.request.hostname, "pid": os.getpid()}
