"""Where a RabbitMQ round trip's time goes: conveyor's send_task(...).get() beside bare floors.

    python benchmarks/rabbitmq_round_trip.py [--samples 400]

Every measure is taken in turn, one sample of each per round, so all of them see the same load
on a shared machine:

- ``confirm, persistent`` / ``confirm, transient``: one raw publish (conveyor's transport, no
  application code) to a durable queue nobody consumes, awaiting RabbitMQ's publisher confirm.
- ``ping-pong, persistent`` / ``ping-pong, transient``: a raw publish with ``reply_to`` =
  direct reply-to, awaiting its confirm, then the reply of a minimal consumer process that
  answers each message at once (no decoding, no task) and acks it. This is the floor for any
  client that does not report a task as sent before RabbitMQ has confirmed it.
- ``conveyor, def`` / ``conveyor, async def``: ``send_task(...).get()`` of an echo task on one
  ``conveyor worker`` (``-c 8``, asyncio pool), results over ``rpc://``, the default settings
  (persistent message, publisher confirm awaited).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from conveyor import App, Envelope, Queue
from conveyor.transports import open_transport

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

app = App("bench", broker=AMQP_URL, result_backend="rpc://")
app.conf.task_default_queue = QUEUE


@app.task(name="bench.echo")
def echo(value: int) -> int:
    return value


@app.task(name="bench.aecho")
async def aecho(value: int) -> int:
    return value


def responder(queue: str, ready: Any) -> None:
    """The minimal consumer: answer every message on ``queue`` via direct reply-to, ack it."""

    async def run() -> None:
        async with open_transport(AMQP_URL) as transport:
            consumer = await transport.consume([queue], prefetch=32)
            ready.set()
            async for delivery in consumer:
                request = delivery.envelope
                if request.body == b"stop":
                    await transport.ack(delivery)
                    return
                reply = Envelope(body=b"pong", correlation_id=request.correlation_id)
                await transport.publish(reply, routing_key=request.reply_to or "")
                await transport.ack(delivery)

    asyncio.run(run())


class Raw:
    """Raw publishes on a connection of their own, run on the App's private event loop."""

    def __init__(self, run: str) -> None:
        self.idle = f"bench.idle.{run}"
        self.served = f"bench.served.{run}"
        self.transport = open_transport(AMQP_URL)
        self.replies: Any = None

    async def start(self) -> None:
        await self.transport.connect()
        for name in (self.idle, self.served):
            await self.transport.declare_queue(Queue(name))
        consumer = await self.transport.consume([DIRECT_REPLY_TO], no_ack=True)
        self.replies = consumer.__aiter__()

    async def confirm(self, mode: int) -> None:
        message = Envelope(body=b"[[1],{},{}]", delivery_mode=mode)
        await self.transport.publish(message, routing_key=self.idle)

    async def ping_pong(self, mode: int) -> None:
        message = Envelope(body=b"ping", reply_to=DIRECT_REPLY_TO, delivery_mode=mode)
        await self.transport.publish(message, routing_key=self.served)
        await self.replies.__anext__()

    async def close(self) -> None:
        await self.transport.publish(Envelope(body=b"stop"), routing_key=self.served)
        for name in (self.idle, self.served):
            await self.transport.delete_queue(name)
        await self.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    queue = f"bench_round_trip_{run}"
    app.conf.task_default_queue = queue
    raw = Raw(run)
    app.run_sync(raw.start())
    ready = multiprocessing.get_context("spawn").Event()
    server = multiprocessing.get_context("spawn").Process(
        target=responder, args=(raw.served, ready), daemon=True
    )
    server.start()
    here = Path(__file__).resolve().parent
    env = {**os.environ, "BENCH_QUEUE": queue, "PYTHONPATH": str(here)}
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-c", "from conveyor.cli.main import main; main()"),
                *("-A", f"{Path(__file__).stem}:app", "worker", "-Q", queue, "-c", "8"),
                *("--hostname", "bench@%h", "-l", "WARNING"),
            ],
            env=env,
            cwd=here,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            ready.wait(30)
            measures = {
                "confirm, persistent": lambda n: app.run_sync(raw.confirm(2)),
                "confirm, transient": lambda n: app.run_sync(raw.confirm(1)),
                "ping-pong, persistent": lambda n: app.run_sync(raw.ping_pong(2)),
                "ping-pong, transient": lambda n: app.run_sync(raw.ping_pong(1)),
                "conveyor, def": lambda n: app.send_task("bench.echo", (n,)).get(timeout=30),
                "conveyor, async def": lambda n: app.send_task("bench.aecho", (n,)).get(timeout=30),
            }
            for n in range(20):  # warm up; the first waits for the worker to start
                for measure in measures.values():
                    measure(n)
            times: dict[str, list[float]] = {name: [] for name in measures}
            for n in range(args.samples):
                for name, measure in measures.items():
                    started = time.perf_counter()
                    measure(n)
                    times[name].append(time.perf_counter() - started)
        finally:
            app.run_sync(raw.close())
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
            server.join(10)

            async def cleanup() -> None:
                async with open_transport(AMQP_URL) as transport:
                    await transport.delete_queue(queue)
                    await transport.delete_exchange(queue)

            app.run_sync(cleanup())
            app.close()
    print(f"{args.samples} samples each, interleaved; RabbitMQ at {AMQP_URL.split('@')[-1]}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"{'':24} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for name, samples in times.items():
        cuts = statistics.quantiles(samples, n=100)
        print(f"{name:24} {cuts[49] * 1000:8.3f} {cuts[89] * 1000:8.3f} {cuts[98] * 1000:8.3f}")


if __name__ == "__main__":
    main()
