"""Producer and consumer processes for the multi-process tests of the shared brokers (SQLite,
Redis; see ``multiprocess.py``).

Run as ``python -m tests.transports.processes ROLE URL ...`` from the repository root.
Each process appends one line per event to files in its log directory, line-buffered, so what
it wrote before a SIGKILL is on disk:

- producer: ``<name>.published`` gets an id once ``publish`` has returned (confirmed);
- consumer: ``<name>.delivered`` per delivery, ``<name>.acking`` before an ``ack_many`` and
  ``<name>.acked`` after it returned (durable). ``consume-then-hold N`` stops acking once it
  has acked N messages and touches ``<name>.holding`` when it holds some unacked: kill it then.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import TextIO

from conveyor import Envelope, Queue
from conveyor.transports import Delivery, Outgoing, open_transport


def _log(log_dir: Path, name: str, kind: str) -> TextIO:
    return open(log_dir / f"{name}.{kind}", "a", buffering=1)


async def produce(url: str, queue: str, log_dir: Path, name: str, count: int) -> None:
    transport = open_transport(url)
    await transport.connect()
    await transport.declare_queue(Queue(queue))
    with _log(log_dir, name, "published") as log:
        i = 0
        while i < count:
            if i % 50 < 25:
                ids = [f"{name}-{j}" for j in range(i, min(i + 5, count))]
                await transport.publish_many(
                    [Outgoing(Envelope(body=x.encode()), routing_key=queue) for x in ids]
                )
            else:
                ids = [f"{name}-{i}"]
                await transport.publish(Envelope(body=ids[0].encode()), routing_key=queue)
            for x in ids:
                log.write(x + "\n")
            i += len(ids)
            await asyncio.sleep(0.0005)
    await transport.close()


async def consume(
    url: str, queue: str, log_dir: Path, name: str, lease: float, stop_acking: int = 0
) -> None:
    transport = open_transport(url, {"lease": lease})
    await transport.connect()
    await transport.declare_queue(Queue(queue))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = await transport.consume([queue], prefetch=20)
    iterator = aiter(consumer)
    batch: list[Delivery] = []
    with (
        _log(log_dir, name, "delivered") as delivered,
        _log(log_dir, name, "acking") as acking,
        _log(log_dir, name, "acked") as acked,
    ):
        (log_dir / f"{name}.ready").touch()

        async def settle() -> None:
            ids = "".join(d.envelope.body.decode() + "\n" for d in batch)
            acking.write(ids)
            await transport.ack_many(batch)
            acked.write(ids)
            batch.clear()

        holding = False  # consume-then-hold: past stop_acking, nothing is acked any more
        while not stop.is_set():
            try:
                delivery = await asyncio.wait_for(anext(iterator), 0.05)
            except TimeoutError:
                if batch and not holding:
                    await settle()
                continue
            delivered.write(delivery.envelope.body.decode() + "\n")
            await asyncio.sleep(0.001)
            batch.append(delivery)
            holding = holding or bool(
                stop_acking and acked.tell() and len(_acked(log_dir, name)) >= stop_acking
            )
            if holding:
                if len(batch) >= 5:
                    (log_dir / f"{name}.holding").touch()  # now kill me: I hold unacked ones
                continue
            if len(batch) >= 10:
                await settle()
        if batch:
            await settle()
    await consumer.cancel()
    await transport.close()


async def hold(url: str, queue: str, log_dir: Path, name: str, lease: float) -> None:
    """Take messages without acking them, declare an exclusive queue, then wait to be killed."""
    transport = open_transport(url, {"lease": lease})
    await transport.connect()
    await transport.declare_queue(Queue(f"{queue}.exclusive", exclusive=True, durable=False))
    consumer = await transport.consume([queue], prefetch=3)
    with _log(log_dir, name, "delivered") as delivered:
        count = 0
        async for delivery in consumer:
            delivered.write(delivery.envelope.body.decode() + "\n")
            count += 1
            if count == 3:
                (log_dir / f"{name}.ready").touch()
                await asyncio.sleep(3600)


def _acked(log_dir: Path, name: str) -> list[str]:
    return (log_dir / f"{name}.acked").read_text().split()


def main(argv: list[str]) -> None:
    role, url, queue, log_dir, name, extra = argv
    directory = Path(log_dir)
    if role == "produce":
        asyncio.run(produce(url, queue, directory, name, int(extra)))
    elif role == "consume":
        asyncio.run(consume(url, queue, directory, name, float(extra)))
    elif role == "consume-then-hold":
        asyncio.run(consume(url, queue, directory, name, 1.0, stop_acking=int(extra)))
    elif role == "hold":
        asyncio.run(hold(url, queue, directory, name, float(extra)))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
