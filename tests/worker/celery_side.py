"""A Celery 5 app for the interoperation tests: the broker comes from INTEROP_BROKER_URL,
results go to INTEROP_BACKEND_URL (default rpc://)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

app = Celery(
    "celery_side",
    broker=os.environ.get("INTEROP_BROKER_URL"),
    backend=os.environ.get("INTEROP_BACKEND_URL", "rpc://"),
)
if str(app.conf.broker_url).startswith("redis"):
    # The routing guide's Redis priority options.
    app.conf.broker_transport_options = {
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
        "global_keyprefix": os.environ.get("INTEROP_KEYPREFIX", ""),
    }
    app.conf.worker_prefetch_multiplier = 1


@app.task(name="interop.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="interop.boom")
def boom() -> None:
    raise ValueError("raised in a Celery worker")


@app.task(name="interop.sleepy", time_limit=1)
def sleepy() -> None:
    import time

    time.sleep(10)


@app.task(name="interop.give_up", bind=True, max_retries=0)
def give_up(self: Any) -> None:
    self.retry(countdown=0)


@app.task(name="interop.record")
def record(key: str, value: str) -> None:
    """Append ``value`` to the Redis list ``key`` of the broker's database (run order)."""
    import redis

    with redis.Redis.from_url(str(app.conf.broker_url)) as client:
        client.rpush(key, value)
