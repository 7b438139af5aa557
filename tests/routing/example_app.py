"""Apps for the ``conveyor routes`` command tests (loaded with -A tests.routing.example_app)."""

from __future__ import annotations

import re

from conveyor import Broadcast, Exchange, ExchangeType, Queue
from conveyor.app import App

app = App(
    "shop",
    broker="memory://",
    config={
        "task_default_queue": "default",
        "task_default_exchange": "tasks",
        "task_default_exchange_type": "topic",
        "task_default_routing_key": "task.default",
        "task_queues": [
            Queue("default", routing_key="task.#"),
            Queue("feed_tasks", routing_key="feed.#"),
            Queue("media", Exchange("media", ExchangeType.DIRECT), max_priority=10),
            Broadcast("broadcast_tasks"),
        ],
        "task_routes": (
            [
                ("feed.tasks.*", {"queue": "feed_tasks", "routing_key": "feed.import"}),
                (re.compile(r"(video|image)\.tasks\..*"), {"queue": "media", "priority": 5}),
                ("tasks.reload_cache", {"exchange": "broadcast_tasks"}),
            ],
        ),
    },
)


@app.task(name="feed.tasks.import_feed")
def import_feed(url: str) -> str:
    return url


@app.task(name="video.tasks.compress")
def compress(path: str) -> str:
    return path


@app.task(name="tasks.reload_cache")
def reload_cache() -> None:
    return None


@app.task(name="web.tasks.render", queue="media")
def render(page: str) -> str:
    return page


broken = App(
    "broken",
    broker="memory://",
    config={
        "task_create_missing_queues": False,
        "task_default_queue": "default",
        "task_queues": [Queue("default"), Queue("plain")],
        "task_routes": (
            [
                ("feed.*", {"queue": "plain", "priority": 3}),
                ("feed.tasks.*", {"queue": "feeds"}),
                ("video.*", {"exchange": "video", "exchange_type": "topic"}),
            ],
        ),
    },
)


@broken.task(name="feed.tasks.import_feed")
def broken_import_feed(url: str) -> str:
    return url


@broken.task(name="web.tasks.render")
def broken_render(page: str) -> str:
    return page
