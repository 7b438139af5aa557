"""Worker parts on their own: host name expansion, the priority buffer, middleware, result
expiry."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor.app import App
from conveyor.protocol.envelope import Envelope
from conveyor.results import State
from conveyor.task import Request
from conveyor.transports.base import Delivery
from conveyor.worker import Middleware, Outcome, PriorityBuffer, Worker, expand_hostname
from tests.worker.conftest import StartWorker


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("z@%h", "z@web1.example.com"),
        ("z@%n", "z@web1"),
        ("%n.%d", "web1.example.com"),
        ("100%%@%n", "100%@web1"),
        ("plain", "plain"),
    ],
)
def test_hostname_expansion(template: str, expected: str) -> None:
    assert expand_hostname(template, host="web1.example.com") == expected


def delivery(priority: int | None, tag: int) -> Delivery:
    return Delivery(Envelope(b"", priority=priority), "q", "", "q", False, 1, tag)


async def test_buffer_orders_by_priority_then_arrival() -> None:
    buffer = PriorityBuffer()
    for tag, priority in enumerate([None, 5, 1, 5, 9]):
        buffer.push(delivery(priority, tag))
    order = [(await buffer.pop()).tag for _ in range(5)]
    assert order == [4, 1, 3, 2, 0]
    waiting = asyncio.create_task(buffer.pop())
    await asyncio.sleep(0)
    assert not waiting.done()
    buffer.push(delivery(0, 9))
    assert (await waiting).tag == 9


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


async def test_result_expires_removes_old_results(
    memory_url: str, start_worker: StartWorker
) -> None:
    app = App(broker=memory_url, result_backend=memory_url, config={"result_expires": 0.3})

    @app.task(name="short_lived")
    def short_lived() -> int:
        return 1

    try:
        await start_worker(app)
        result = await short_lived.adelay()
        assert await result.aget(timeout=5) == 1
        fresh = app.result(result.id)
        assert await fresh.astate() is State.SUCCESS
        deadline = time.monotonic() + 5
        while await app.result(result.id).astate() is not State.PENDING:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await app.aclose()
