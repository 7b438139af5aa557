"""conveyor/worker/middleware.py: hooks run around tasks, after-hooks in reverse."""

from __future__ import annotations

import asyncio

from conveyor.app import App
from conveyor.task import Request
from conveyor.worker import Middleware, Outcome, Worker
from tests.worker.conftest import StartWorker


async def test_middleware_hooks_run_around_tasks(app: App, start_worker: StartWorker) -> None:
    calls: list[str] = []

    class Recorder(Middleware):
        def __init__(self, name: str) -> None:
            self.name = name

        def before_task(self, worker: Worker, request: Request) -> None:
            calls.append(f"{self.name}.before {request.task}")

        def after_task(self, worker: Worker, request: Request, outcome: Outcome) -> None:
            calls.append(f"{self.name}.after {outcome.state.value}")

    @app.task(name="hooked")
    def hooked() -> int:
        return 1

    await start_worker(middleware=[Recorder("a"), Recorder("b")])
    await (await hooked.adelay()).aget(timeout=5)
    await asyncio.sleep(0.01)
    assert calls == [
        "a.before hooked",
        "b.before hooked",
        "b.after SUCCESS",
        "a.after SUCCESS",
    ]
