"""Small helpers the conformance tests share (not fixtures)."""

from __future__ import annotations

import asyncio

from conveyor import Envelope
from conveyor.transports import Consumer, Delivery, Transport


def env(body: str | bytes, **props: object) -> Envelope:
    """An envelope with ``body`` (str is UTF-8 encoded) and the given properties."""
    data = body.encode() if isinstance(body, str) else body
    return Envelope(body=data, **props)  # type: ignore[arg-type]


async def take(consumer: Consumer, n: int, timeout: float = 5.0) -> list[Delivery]:
    """The next ``n`` deliveries of ``consumer``, failing the test after ``timeout`` seconds."""
    got: list[Delivery] = []

    async def run() -> None:
        async for delivery in consumer:
            got.append(delivery)
            if len(got) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return got


async def drain(transport: Transport, queue: str) -> list[Delivery]:
    """Get and ack every ready message of ``queue`` now, in delivery order."""
    out: list[Delivery] = []
    while (delivery := await transport.get(queue)) is not None:
        await transport.ack(delivery)
        out.append(delivery)
    return out


async def eventually_get(transport: Transport, queue: str, timeout: float = 5.0) -> Delivery:
    """Poll ``get`` on ``queue`` until a message arrives (for messages moved in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        delivery = await transport.get(queue)
        if delivery is not None:
            return delivery
        if loop.time() > deadline:
            raise AssertionError(f"no message arrived in {queue!r} within {timeout}s")
        await asyncio.sleep(0.02)


def copies(transport: Transport, queues: int) -> int:
    """What ``publish`` returns for a message that reached ``queues`` queues: the count itself,
    or 1 for "one or more" on brokers that route natively and do not say (RabbitMQ)."""
    if transport.capabilities.native_exchanges:
        return min(queues, 1)
    return queues


def bodies(deliveries: list[Delivery]) -> list[str]:
    """The bodies of ``deliveries`` decoded as UTF-8."""
    return [d.envelope.body.decode() for d in deliveries]
