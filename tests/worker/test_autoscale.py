"""--autoscale MAX,MIN: the pool grows while tasks wait and shrinks back when idle."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.testing import start_worker
from conveyor.worker.autoscale import Autoscaler, parse_autoscale
from conveyor.worker.pools import AsyncioPool
from tests.worker.conftest import StartWorker
from tests.worker.controls_app import app as controls
from tests.worker.controls_app import nap


@pytest.mark.parametrize(
    ("text", "bounds"), [("10,3", (10, 3)), ("4", (4, 0)), (" 2 , 2 ", (2, 2))]
)
def test_parse_autoscale(text: str, bounds: tuple[int, int]) -> None:
    assert parse_autoscale(text) == bounds


def test_a_bad_autoscale_says_what_is_wrong() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_autoscale("ten")
    assert str(caught.value) == "autoscale 'ten' is not MAX,MIN: give two whole numbers, like 10,3"
    with pytest.raises(ConfigurationError) as caught:
        parse_autoscale("3,5")
    assert str(caught.value) == (
        "autoscale MAX,MIN must have MAX of 1 or more and MIN between 0 and MAX, got 3,5"
    )


async def test_autoscaler_grows_with_demand_and_shrinks_after_keepalive() -> None:
    now = [0.0]
    demand = [0]
    pool = AsyncioPool(1)
    scaler = Autoscaler(pool, 5, 1, lambda: demand[0], keepalive=10, clock=lambda: now[0])
    demand[0] = 3
    assert await scaler.step() == 3
    demand[0] = 9
    assert await scaler.step() == 5  # never above MAX
    demand[0] = 2
    now[0] = 9.0
    assert await scaler.step() == 5  # not idle for keepalive yet
    now[0] = 15.0
    assert await scaler.step() == 2  # to the demand
    demand[0] = 0
    now[0] = 30.0
    assert await scaler.step() == 1  # never below MIN
    await pool.close()


async def test_worker_runs_more_at_once_as_the_pool_grows(
    app: App, start_worker: StartWorker
) -> None:
    running = 0
    most = 0
    release = asyncio.Event()

    @app.task(name="scale.wait")
    async def wait() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    worker = await start_worker(autoscale="4,1")
    assert worker.concurrency == 4
    assert worker.pool.concurrency == 1
    results = [await wait.adelay() for _ in range(4)]
    await asyncio.sleep(0.2)
    assert most == 1  # MIN runs at once until the autoscaler looks
    scaler = worker.autoscaler
    assert scaler is not None
    await scaler.step()
    await asyncio.sleep(0.2)
    assert worker.pool.concurrency == 4
    assert most == 4
    release.set()
    for result in results:
        await result.aget(timeout=10)
    scaler.keepalive = 0
    await scaler.step()
    assert worker.pool.concurrency == 1


def _pool_children() -> int:
    return sum(1 for p in multiprocessing.active_children() if p.name == "conveyor-pool")


def _wait_children(count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _pool_children() != count:
        if time.monotonic() > deadline:
            pytest.fail(f"{_pool_children()} pool processes, expected {count}")
        time.sleep(0.05)


def test_the_processes_pool_starts_and_stops_children() -> None:
    spec = "tests.worker.controls_app:app"
    with start_worker(controls, pool="processes", app_spec=spec, autoscale=(3, 1)) as worker:
        _wait_children(1)
        results = [nap.delay(2.0) for _ in range(3)]
        _wait_children(3)  # the autoscaler looks every second
        for result in results:
            result.get(timeout=30)
        scaler = worker.autoscaler
        assert scaler is not None
        scaler.keepalive = 0
        _wait_children(1)
    _wait_children(0)
