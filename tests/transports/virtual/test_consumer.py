"""The virtual broker's consumer (memory, SQLite, Redis): a trickle of messages costs one
storage fetch each, and none waits for the fallback poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Queue
from conveyor.transports.virtual import VirtualTransport
from tests.transports.conftest import MakeTransport
from tests.transports.helpers import env


@pytest.mark.parametrize("transport_id", ["memory", "sqlite", "redis"])
async def test_a_trickle_costs_one_fetch_per_message(
    make_transport: MakeTransport, names: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await make_transport({"poll_interval": 30})
    producer = await make_transport()
    assert isinstance(worker, VirtualTransport)
    queue = names("trickle")
    await worker.declare_queue(Queue(queue))
    fetches = 0
    dequeue = worker._storage.dequeue

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal fetches
        fetches += 1
        return await dequeue(*args, **kwargs)

    monkeypatch.setattr(worker._storage, "dequeue", counting)
    consumer = await worker.consume([queue], prefetch=10)
    deliveries = consumer.__aiter__()
    started = time.monotonic()
    for n in range(5):
        waiting = asyncio.ensure_future(deliveries.__anext__())
        await asyncio.sleep(0.05)  # the consumer is idle, its queue empty
        await producer.publish(env(f"m{n}"), routing_key=queue)
        delivery = await asyncio.wait_for(waiting, 5)
        assert delivery.envelope.body == f"m{n}".encode()
        await worker.ack(delivery)
    # Woken by each publish, never by the 30 s fallback poll.
    assert time.monotonic() - started < 5
    # The first look at the empty queue, then one fetch per message (not a second, empty one
    # straight after each delivery).
    assert fetches == 1 + 5
    await consumer.cancel()
