"""Tasks for the execution-control tests (soft time limits, per-child limits, autoscale); the
processes pool's children load it as ``tests.worker.controls_app:app``."""

from __future__ import annotations

import asyncio
import os
import time

from conveyor import App, SoftTimeLimitExceeded

app = App("controls")


@app.task(name="controls.tidy_sync", soft_time_limit=0.3, time_limit=30)
def tidy_sync() -> str:
    try:
        for _ in range(3000):
            time.sleep(0.01)
    except SoftTimeLimitExceeded as exc:
        return f"tidied up: {exc}"
    return "never interrupted"


@app.task(name="controls.tidy_async", soft_time_limit=0.3, time_limit=30)
async def tidy_async() -> str:
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded as exc:
        await asyncio.sleep(0.01)  # it may still await while tidying up
        return f"tidied up: {exc}"
    return "never interrupted"


@app.task(name="controls.ignores_soft", soft_time_limit=0.2, time_limit=30, max_retries=0)
def ignores_soft() -> None:
    for _ in range(3000):
        time.sleep(0.01)


@app.task(name="controls.pid")
def pid() -> int:
    return os.getpid()


@app.task(name="controls.hog")
def hog(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return os.getpid()


@app.task(name="controls.nap")
def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.task(name="controls.stubborn_sync", soft_time_limit=0.2, time_limit=1.0, max_retries=0)
def stubborn_sync() -> str:
    try:
        for _ in range(3000):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        for _ in range(3000):  # ignores the warning: the hard limit ends it
            time.sleep(0.01)
    return "never stopped"


@app.task(name="controls.stubborn_async", soft_time_limit=0.2, time_limit=1.0, max_retries=0)
async def stubborn_async() -> str:
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(30)
    return "never stopped"
