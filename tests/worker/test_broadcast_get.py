"""``get`` on a broadcast task points to ``collect``: several workers answer it."""

from __future__ import annotations

import pytest

from conveyor.app import App
from conveyor.errors import ResultUnavailable
from conveyor.routing.entities import Broadcast
from tests.worker.conftest import StartWorker


async def test_get_on_a_broadcast_points_to_collect(app: App, start_worker: StartWorker) -> None:
    app.config_from_object({"task_queues": [Broadcast("status")]})

    @app.task(name="status.ping", queue="status")
    def ping() -> str:
        return "pong"

    await start_worker(queues=["status"], hostname="one@test")
    await start_worker(queues=["status"], hostname="two@test")
    result = await ping.adelay()
    with pytest.raises(ResultUnavailable) as caught:
        await result.aget(timeout=5)
    assert str(caught.value) == (
        f"task 'status.ping' [{result.id}] went to broadcast queue 'status': every worker "
        "consuming it runs it and stores a result of its own, so there is no one result to "
        "get(); use collect(timeout=..., expected=...) for each worker's result by hostname"
    )
    assert await result.acollect(timeout=5, expected=2) == {"one@test": "pong", "two@test": "pong"}
