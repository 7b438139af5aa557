"""The routing guide's first example as an app (``-A tests.cli.guide_app``): feed tasks go to
``feeds``, everything else to the default queue. GUIDE_DEFAULT_QUEUE sets task_default_queue
(the guide's ``task_default_queue = 'default'``); GUIDE_DECLARE=1 declares both queues in
task_queues."""

from __future__ import annotations

import os

from conveyor import App, Queue

app = App("proj")
app.conf.task_routes = {"feed.tasks.import_feed": {"queue": "feeds"}}
if os.environ.get("GUIDE_DEFAULT_QUEUE"):
    app.conf.task_default_queue = os.environ["GUIDE_DEFAULT_QUEUE"]
if os.environ.get("GUIDE_DECLARE"):
    app.conf.task_queues = [Queue("feeds"), Queue(app.conf.task_default_queue)]


@app.task(name="feed.tasks.import_feed")
def import_feed(url: str) -> str:
    return f"imported {url}"


@app.task(name="web.tasks.render")
def render(page: str) -> str:
    return f"rendered {page}"
