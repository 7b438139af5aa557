"""conveyor/worker/buffer.py: prefetched deliveries wait by priority, then arrival."""

from __future__ import annotations

import asyncio

from conveyor.protocol.envelope import Envelope
from conveyor.transports.base import Delivery
from conveyor.worker import PriorityBuffer


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
