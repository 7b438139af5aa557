"""conveyor/eager.py: task_always_eager runs tasks in the caller and returns AsyncResults."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import signals
from conveyor.app import App
from conveyor.errors import NotRegistered
from conveyor.results.async_result import AsyncResult
from conveyor.results.meta import State


@pytest.fixture
def app() -> App:
    # No broker is reachable at this URL: an eager call must never touch it.
    return App(
        "eager", broker="amqp://nobody:nothing@127.0.0.1:1/", config={"task_always_eager": True}
    )


def test_delay_runs_in_the_caller_and_returns_an_async_result(app: App) -> None:
    @app.task(name="eager.add")
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=1) == 5
    assert result.state is State.SUCCESS
    assert result.ready()
    assert result.successful()
    assert result.result == 5
    assert app.send_task("eager.add", args=[1, 1]).get() == 2
    assert add.apply_async(kwargs={"x": 1, "y": 2}, task_id="fixed").id == "fixed"


def test_a_failure_is_held_by_the_result_unless_propagating(app: App) -> None:
    @app.task(name="eager.boom", max_retries=0)
    def boom() -> None:
        raise ValueError("bad input")

    result = boom.delay()
    assert result.failed()
    assert result.state is State.FAILURE
    assert isinstance(result.result, ValueError)
    assert "ValueError: bad input" in (result.traceback or "")
    with pytest.raises(ValueError, match="bad input"):
        result.get()
    assert isinstance(result.get(propagate=False), ValueError)
    app.conf.task_eager_propagates = True
    with pytest.raises(ValueError, match="bad input"):
        boom.delay()


def test_request_retries_and_signals_as_on_a_worker(app: App) -> None:
    seen: list[tuple[str, Any]] = []

    @app.task(name="eager.flaky", bind=True, max_retries=3)
    def flaky(self: Any) -> str:
        seen.append(("run", self.request.retries))
        if self.request.retries < 2:
            raise self.retry(countdown=60)
        return f"done by {self.request.hostname}"

    def on_retry(sender: Any, request: Any, **kwargs: Any) -> None:
        seen.append(("task_retry", request.retries))

    signals.task_retry.connect(on_retry)
    try:
        assert flaky.delay().get() == "done by eager"
    finally:
        signals.task_retry.disconnect(on_retry)
    assert seen == [
        ("run", 0),
        ("task_retry", 0),
        ("run", 1),
        ("task_retry", 1),
        ("run", 2),
    ]


def test_autoretry_gives_up_after_max_retries(app: App) -> None:
    runs: list[int] = []

    @app.task(name="eager.always_fails", autoretry_for=(OSError,), max_retries=2)
    def always_fails() -> None:
        runs.append(1)
        raise OSError("disk")

    result = always_fails.delay()
    assert len(runs) == 3
    with pytest.raises(OSError, match="disk"):
        result.get()


async def test_async_task_and_async_twins(app: App) -> None:
    @app.task(name="eager.double")
    async def double(x: int) -> int:
        return x * 2

    @app.task(name="eager.parent", bind=True)
    async def parent(self: Any) -> tuple[str | None, str]:
        child = await double.adelay(4)
        return self.request.id, await child.aget()

    result = await parent.adelay()
    parent_id, value = await result.aget()
    assert parent_id == result.id
    assert value == 8
    assert await result.astate() is State.SUCCESS


def test_sync_call_of_an_async_task(app: App) -> None:
    @app.task(name="eager.async_square")
    async def square(x: int) -> int:
        return x * x

    assert square.delay(7).get() == 49


def test_send_task_of_a_task_not_registered_here(app: App) -> None:
    with pytest.raises(NotRegistered) as caught:
        app.send_task("remote.transcode", kwargs={"path": "a.mp4"})
    assert str(caught.value) == (
        "task 'remote.transcode' is not registered in this process, and task_always_eager runs "
        "tasks in the caller: import the module that defines it, or turn task_always_eager off "
        "to send it to a worker"
    )
