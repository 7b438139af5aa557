"""--max-tasks-per-child and --max-memory-per-child: the processes pool replaces a child after
N tasks, or after the task that took it past the memory limit (that task still completes)."""

from __future__ import annotations

import logging

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.testing import start_worker
from conveyor.worker import Worker
from tests.worker.controls_app import app as controls
from tests.worker.controls_app import hog, pid

SPEC = "tests.worker.controls_app:app"


def test_a_child_is_replaced_after_max_tasks() -> None:
    with start_worker(
        controls, pool="processes", concurrency=1, app_spec=SPEC, max_tasks_per_child=2
    ):
        pids = [pid.delay().get(timeout=30) for _ in range(5)]
    assert pids[0] == pids[1]
    assert pids[2] == pids[3]
    assert len({pids[0], pids[2], pids[4]}) == 3


def test_a_child_is_replaced_after_the_task_that_passed_the_memory_limit() -> None:
    # A child uses 30-250 MB after loading the app (more when spawned from a full pytest run,
    # whose modules it imports again); the limit is 350 MB (in KiB, as in Celery).
    with start_worker(
        controls, pool="processes", concurrency=1, app_spec=SPEC, max_memory_per_child=350 * 1024
    ) as worker:
        first, second = (pid.delay().get(timeout=30) for _ in range(2))
        hungry = hog.delay(500).get(timeout=30)
        after = pid.delay().get(timeout=30)
        assert getattr(worker.pool, "replaced", None) == 1
    assert first == second == hungry
    assert after != hungry


def test_the_settings_give_the_limits() -> None:
    controls.conf.worker_max_tasks_per_child = 1
    try:
        with start_worker(controls, pool="processes", concurrency=1, app_spec=SPEC):
            pids = {pid.delay().get(timeout=30) for _ in range(3)}
    finally:
        controls.conf.worker_max_tasks_per_child = None
    assert len(pids) == 3


def test_asked_for_on_another_pool_is_an_error(app: App) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Worker(app, pool="threads", max_tasks_per_child=10)
    assert str(caught.value) == (
        "max tasks/memory per child apply to the processes pool only, and this worker uses "
        "the threads pool: add --pool processes or leave them out"
    )


def test_set_for_another_pool_is_a_warning(app: App, caplog: pytest.LogCaptureFixture) -> None:
    app.conf.worker_max_memory_per_child = 100_000
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        Worker(app, pool="asyncio")
    assert caplog.messages == [
        "max tasks/memory per child apply to the processes pool only, and this worker uses "
        "the asyncio pool: the worker_max_*_per_child settings are ignored"
    ]


def test_a_limit_below_one_is_refused(app: App) -> None:
    with pytest.raises(ConfigurationError, match="max_tasks_per_child must be 1 or more, got 0"):
        Worker(app, pool="processes", app_spec=SPEC, max_tasks_per_child=0)
