"""A Celery 5 app for the workflow interoperation tests: broker INTEROP_BROKER_URL, results in
INTEROP_BACKEND_URL (Redis: chords need a backend that joins)."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "celery_side",
    broker=os.environ.get("INTEROP_BROKER_URL"),
    backend=os.environ.get("INTEROP_BACKEND_URL"),
)


@app.task(name="wf.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="wf.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="wf.listed")
def listed(values: list[int]) -> list[int]:
    return values
