"""soft_time_limit: SoftTimeLimitExceeded raised inside the task, in every pool, before the hard
limit; the task can catch it and return, or fail with it."""

from __future__ import annotations

import pytest

from conveyor.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from conveyor.protocol.task_message import TaskMessage, encode_task
from conveyor.results.meta import State
from conveyor.testing import start_worker
from tests.worker.controls_app import (
    app,
    ignores_soft,
    stubborn_async,
    stubborn_sync,
    tidy_async,
    tidy_sync,
)

SPEC = "tests.worker.controls_app:app"
POOLS = ["asyncio", "threads", "processes"]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("task", [tidy_sync, tidy_async], ids=["function", "async"])
def test_the_task_catches_its_soft_limit_and_returns(pool: str, task: object) -> None:
    assert task in (tidy_sync, tidy_async)
    with start_worker(app, pool=pool, concurrency=1, app_spec=SPEC):
        result = task.delay()  # type: ignore[attr-defined]
        value = result.get(timeout=20)
    name = task.name  # type: ignore[attr-defined]
    assert value.startswith(f"tidied up: task {name}[{result.id}] passed its soft time limit")
    assert value.endswith("of 0.3 s")


@pytest.mark.parametrize("pool", POOLS)
def test_an_uncaught_soft_limit_fails_the_run(pool: str) -> None:
    with start_worker(app, pool=pool, concurrency=1, app_spec=SPEC):
        result = ignores_soft.delay()
        with pytest.raises(SoftTimeLimitExceeded, match=r"passed its soft time limit of 0\.2 s"):
            result.get(timeout=20)
        assert result.state is State.FAILURE


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("task", [stubborn_sync, stubborn_async], ids=["function", "async"])
def test_the_hard_limit_still_ends_a_task_that_ignores_its_soft_limit(
    pool: str, task: object
) -> None:
    with start_worker(app, pool=pool, concurrency=1, app_spec=SPEC):
        result = task.delay()  # type: ignore[attr-defined]
        with pytest.raises(TimeLimitExceeded, match=r"past its time limit of 1 s"):
            result.get(timeout=20)


def test_a_soft_limit_sent_by_a_celery_client_is_kept() -> None:
    """Celery puts ``timelimit: [hard, soft]`` in the message; its soft limit wins over the
    task's own (0.3 s)."""
    with start_worker(app, concurrency=1):
        message = TaskMessage(
            task="controls.tidy_sync", id="celery-sent", args=(), kwargs={}, timelimit=(30, 0.2)
        )
        transport = app.run_sync(app.atransport())
        app.run_sync(
            transport.publish(encode_task(message, "json"), exchange="", routing_key="celery")
        )
        value = app.result("celery-sent").get(timeout=20)
    assert value.endswith("passed its soft time limit of 0.2 s")
