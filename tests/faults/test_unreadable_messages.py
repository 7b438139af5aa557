"""Messages a broker holds but nobody can read: a real worker (``-c 1``) dead-letters each with
the real reason, acks it, and runs the good tasks queued behind them, on every broker.

- RabbitMQ: a header table nested 5,000 levels (about 35 KB: RabbitMQ takes it) and one nested
  33 levels (past what an envelope holds). Before issue 15 the first made the worker reconnect
  four times a second forever, the second was rejected into nowhere.
- Redis and SQLite: stored bytes that are not an envelope. Before, Redis's consumer died on them
  (and every restarted worker with it); SQLite dead-lettered them naming the content type.
"""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from conveyor.app import App
from conveyor.errors import NotFound
from conveyor.protocol.dead_letters import DEAD_LETTER_HEADERS
from conveyor.transports.amqp.codec import message_frames, shortstr
from conveyor.transports.amqp.connection import Connection
from conveyor.transports.base import Transport
from conveyor.transports.unreadable import UNREADABLE_REASON
from tests.faults.conftest import StartWorker, wait_until

GOOD = 3


def nested_headers(depth: int) -> bytes:
    """A headers table with one header nesting ``depth`` tables, built without recursion."""
    value = b"F\x00\x00\x00\x00"
    for _ in range(depth):
        inner = b"\x01k" + value
        value = b"F" + struct.pack(">I", len(inner)) + inner
    entry = b"\x04deep" + value
    return struct.pack(">I", len(entry)) + entry


async def publish_raw(url: str, queue: str, headers: bytes, body: bytes) -> None:
    """Publish to ``queue`` on RabbitMQ with ``headers`` as the encoded field table, past every
    check conveyor's own publishing makes (as a hostile or buggy publisher would)."""
    parts = urlsplit(url)
    connection = await Connection.open(
        parts.hostname or "127.0.0.1",
        parts.port or 5672,
        vhost="/",
        user=parts.username or "guest",
        password=parts.password or "guest",
        heartbeat=0,
    )
    try:
        channel = await connection.channel(confirms=True)
        message_id = uuid.uuid4().hex
        props = shortstr("application/json", "") + headers + b"\x02" + shortstr(message_id, "")
        flags = 0x8000 | 0x2000 | 0x1000 | 0x0080
        frames = message_frames(
            channel.number, connection.frame_max - 8, "", queue, False, props, flags, body
        )
        assert await channel.publish(frames, message_id) is True
    finally:
        await connection.close()


async def poison(kind: str, url: str, client: App, queue: str) -> list[str]:
    """Put four unreadable messages at the head of ``queue``; the causes each must be named by."""
    transport = await client.atransport()
    if kind == "amqp":
        body = b'[[], {}, {"callbacks": null}]'
        for depth in (5000, 5000):
            await publish_raw(url, queue, nested_headers(depth), body)
        for depth in (33, 40):
            await publish_raw(url, queue, nested_headers(depth), body)
        return ["nested more than 32 levels deep"] * 4
    for i in range(4):
        await client.asend_task("faults.record", [f"poison-{i}", "/nonexistent"])
    await transport.queue_stats(queue)  # acks and writes are flushed
    if kind == "sqlite":
        path = urlsplit(url).path
        with sqlite3.connect(path) as db:
            db.execute("UPDATE messages SET envelope = x'00000010ffff' WHERE queue = ?", (queue,))
    else:
        prefix = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))["key_prefix"]
        with redis.Redis.from_url(url.split("?")[0]) as r:
            key = f"{prefix}q:{queue}:m"
            for field in r.hkeys(key):
                blob: bytes = r.hget(key, field)  # type: ignore[assignment]
                r.hset(key, field, blob[: envelope_start(blob)] + b"\x00\x00\x00\x10garbage")
    return ["not a conveyor envelope"] * 4


def envelope_start(blob: bytes) -> int:
    """Where the envelope starts in a Redis message blob (see redis/records.py's ``pack``)."""
    lines = blob.split(b"\n", 5)
    start = len(blob) - len(lines[5]) + int(lines[4])
    (size,) = struct.unpack_from(">I", blob, start)
    return start + 4 + int(size)


async def dead_letters(transport: Transport, queue: str) -> list[dict[str, object]]:
    out = []
    while (delivery := await transport.get(queue)) is not None:
        out.append(dict(delivery.envelope.headers))
        await transport.ack(delivery)
    return out


async def test_unreadable_messages_are_dead_lettered_with_their_cause_and_the_worker_goes_on(
    broker_url: str,
    queue_name: str,
    client_of: Callable[[str], App],
    start_worker: StartWorker,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    kind = request.node.callspec.params["broker_url"]
    client = client_of(broker_url)
    transport = await client.atransport()
    await client.declare(transport, client.router.queue(queue_name))
    causes = await poison(kind, broker_url, client, queue_name)
    ran = tmp_path / "ran.txt"
    for i in range(GOOD):
        await client.asend_task("faults.record", [f"good-{i}", str(ran)])
    worker = start_worker(broker_url, "-c", "1")

    def good_ran() -> bool:
        return ran.exists() and len(ran.read_text().split()) >= GOOD

    await wait_until(good_ran, 30, lambda: f"good tasks did not run:\n{worker.output()}")
    dead_queue = f"{queue_name}.dead"

    async def count_dead() -> int:
        try:
            return (await transport.queue_stats(dead_queue)).ready
        except NotFound:
            return 0

    for _ in range(200):
        if await count_dead() >= 4:
            break
        await asyncio.sleep(0.05)
    letters = await dead_letters(transport, dead_queue)
    try:
        assert sorted(ran.read_text().split()) == [f"good-{i}" for i in range(GOOD)]
        assert len(letters) == 4, worker.output()
        reason_header = DEAD_LETTER_HEADERS[0]
        for headers, cause in zip(letters, causes, strict=True):
            reason = str(headers[reason_header])
            assert reason.startswith("unreadable message: "), reason
            assert cause in reason
            assert cause in str(headers[UNREADABLE_REASON])
        assert (await transport.queue_stats(queue_name)).ready == 0
        assert worker.alive(), worker.output()
    finally:
        await transport.delete_queue(dead_queue)
        await transport.delete_queue(queue_name)


async def test_get_reads_a_5000_level_header_message_from_rabbitmq(
    rabbitmq_url: str, queue_name: str, client_of: Callable[[str], App]
) -> None:
    client = client_of(rabbitmq_url)
    transport = await client.atransport()
    await client.declare(transport, client.router.queue(queue_name))
    try:
        await publish_raw(rabbitmq_url, queue_name, nested_headers(5000), b"body")
        delivery = None
        for _ in range(100):
            if (delivery := await transport.get(queue_name)) is not None:
                break
            await asyncio.sleep(0.05)
        assert delivery is not None
        assert delivery.envelope.body == b"body"
        reason = str(delivery.envelope.headers[UNREADABLE_REASON])
        assert "nested more than 32 levels deep" in reason
        await transport.ack(delivery)
        assert (await transport.queue_stats(queue_name)).ready == 0
    finally:
        await transport.delete_queue(queue_name)
