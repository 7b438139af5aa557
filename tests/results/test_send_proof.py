"""A send with an rpc:// result is done when the broker confirms the message or when the
task's reply comes back, whichever is first: a reply proves a worker has the task."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from conveyor.app import App
from conveyor.worker import Worker


async def test_a_reply_ends_the_wait_for_a_slow_confirm(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = f"memory://proof-{uuid.uuid4().hex}"
    remote = App("remote", broker=broker, result_backend="rpc://")
    caller = App("web", broker=broker, result_backend="rpc://")

    @remote.task(name="remote.add")
    def add(x: int, y: int) -> int:
        return x + y

    worker = Worker(remote, queues=["proof"], concurrency=2, shutdown_grace=5.0)
    await worker.start()
    try:
        transport = await caller.atransport()
        confirmed = asyncio.Event()
        publish = transport.publish

        async def slow_confirm(*args: Any, **kwargs: Any) -> int:
            routed = await publish(*args, **kwargs)
            await confirmed.wait()  # the message is out; its confirm has not come yet
            return routed

        monkeypatch.setattr(transport, "publish", slow_confirm)
        result = await asyncio.wait_for(caller.asend_task("remote.add", (1, 2), queue="proof"), 5)
        assert await result.aget(timeout=5) == 3
        # An id chosen by the caller may have old replies about it: only the confirm counts.
        sending = asyncio.ensure_future(
            caller.asend_task("remote.add", (2, 2), queue="proof", task_id=uuid.uuid4().hex)
        )
        await asyncio.sleep(0.3)
        assert not sending.done()
        confirmed.set()
        mine = await asyncio.wait_for(sending, 5)
        assert await mine.aget(timeout=5) == 4
    finally:
        await worker.stop()
        await caller.aclose()
        await remote.aclose()
