"""Redis: conveyor's layout against the kombu layout, transport only, in one process.

    python benchmarks/kombu_layout.py [--messages 2000]

For each layout: publish ``--messages`` small envelopes one after another (each awaiting Redis),
then consume and ack them all with a prefetch of 100; prints messages per second for each phase.
Both run on Redis database 15 under key prefixes of their own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any

# This directory holds redis.py (a benchmark): take it off the path so redis-py is found.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(__file__)]

import redis  # noqa: E402

from conveyor.protocol.envelope import Envelope  # noqa: E402
from conveyor.routing.entities import Queue  # noqa: E402
from conveyor.transports import open_transport  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


async def run(layout: str, count: int) -> tuple[float, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    options: dict[str, Any] = (
        {"layout": "kombu", "global_keyprefix": prefix}
        if layout == "kombu"
        else {"key_prefix": prefix}
    )
    transport = open_transport(REDIS_URL, options)
    await transport.connect()
    try:
        await transport.declare_queue(Queue("bench"))
        envelope = Envelope(b"[[1, 2], {}, {}]", headers={"task": "bench.add"})
        started = time.perf_counter()
        for _ in range(count):
            await transport.publish(envelope, routing_key="bench")
        published = time.perf_counter() - started
        consumer = await transport.consume(["bench"], prefetch=100)
        started, seen = time.perf_counter(), 0
        async for delivery in consumer:
            await transport.ack(delivery)
            seen += 1
            if seen == count:
                break
        consumed = time.perf_counter() - started
        await consumer.cancel()
    finally:
        await transport.close()
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
    return count / published, count / consumed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    count = parser.parse_args().messages
    for layout in ("conveyor", "kombu"):
        publish, consume = asyncio.run(run(layout, count))
        print(
            f"{layout:>8} layout: publish {publish:8.0f} msg/s   consume+ack {consume:8.0f} msg/s"
        )


if __name__ == "__main__":
    main()
