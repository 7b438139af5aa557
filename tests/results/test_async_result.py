"""``AsyncResult.get`` when there is no one result to wait for, and its timeout message."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor.app import App
from conveyor.errors import ResultTimeout, ResultUnavailable
from conveyor.routing.entities import Broadcast
from conveyor.worker import Worker


@pytest.fixture
def app() -> Iterator[App]:
    url = f"memory://results-{uuid.uuid4().hex}"
    app = App("results", broker=url, result_backend=url)
    yield app
    app.close()


def test_a_result_timeout_says_the_rounded_time_and_what_to_check(app: App) -> None:
    result = app.send_task("nobody.listens", queue=f"q-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ResultTimeout) as caught:
        result.get(timeout=0.2999999)
    assert str(caught.value) == (
        f"no result for task {result.id} within 0.3 s; is a worker consuming its queue?"
    )


@pytest.mark.parametrize("where", ["send option", "task option", "setting"])
def test_get_on_a_task_sent_with_ignore_result_fails_at_once(app: App, where: str) -> None:
    if where == "setting":
        app.conf.task_ignore_result = True

    @app.task(name="web.fire", ignore_result=True if where == "task option" else None)
    def fire() -> None: ...

    result = fire.apply_async(ignore_result=True) if where == "send option" else fire.delay()
    started = time.monotonic()
    with pytest.raises(ResultUnavailable) as caught:
        result.get(timeout=30)
    assert time.monotonic() - started < 5
    assert str(caught.value) == (
        f"results are off for task 'web.fire' [{result.id}]: it was sent with ignore_result, so "
        "no worker stores one and get() would only wait out its timeout; send it with "
        "ignore_result=False (or set the task's ignore_result=False) to get its result"
    )


async def test_aget_on_a_task_sent_with_ignore_result_fails_at_once(app: App) -> None:
    result = await app.asend_task("web.fire", ignore_result=True)
    with pytest.raises(ResultUnavailable, match=r"^results are off for task 'web\.fire'"):
        await result.aget(timeout=30)
    await app.aclose()


async def test_get_on_a_broadcast_points_to_collect() -> None:
    url = f"memory://results-{uuid.uuid4().hex}"
    app = App(
        "results", broker=url, result_backend=url, config={"task_queues": [Broadcast("status")]}
    )

    @app.task(name="status.ping", queue="status")
    def ping() -> str:
        return "pong"

    workers = [
        Worker(app, queues=["status"], hostname=name, concurrency=1, shutdown_grace=5.0)
        for name in ("one@test", "two@test")
    ]
    try:
        for worker in workers:
            await worker.start()
        result = await ping.adelay()
        with pytest.raises(ResultUnavailable) as caught:
            await result.aget(timeout=5)
        assert str(caught.value) == (
            f"task 'status.ping' [{result.id}] went to broadcast queue 'status': every worker "
            "consuming it runs it and stores a result of its own, so there is no one result to "
            "get(); use collect(timeout=..., expected=...) for each worker's result by hostname"
        )
        collected = await result.acollect(timeout=5, expected=2)
        assert collected == {"one@test": "pong", "two@test": "pong"}
    finally:
        for worker in reversed(workers):
            await worker.stop()
        await app.aclose()
