"""A Celery 5 app, for the interoperation test: the broker comes from INTEROP_AMQP_URL."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("celery_side", broker=os.environ.get("INTEROP_AMQP_URL"), backend="rpc://")


@app.task(name="interop.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="interop.boom")
def boom() -> None:
    raise ValueError("raised in a Celery worker")
