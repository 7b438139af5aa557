"""Threads' publishes gathered in the connection's output: the loop writes them in the order
they were given, after what was ahead of them, and a gathered message whose connection goes
before it was written is sent again on the next connection."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Callable

from conveyor import App
from conveyor.transports.amqp.channel import Channel
from conveyor.transports.amqp.connection import Connection
from conveyor.transports.amqp.errors import ConnectionClosed


def in_thread(call: Callable[[], object]) -> None:
    """Run ``call`` in another thread and wait for it without letting the loop run."""
    thread = threading.Thread(target=call)
    thread.start()
    thread.join()


async def received(peer: socket.socket, size: int) -> bytes:
    got = bytearray()
    peer.setblocking(False)
    for _ in range(2000):
        try:
            got += peer.recv(65536)
        except BlockingIOError:
            if len(got) >= size:
                break
            await asyncio.sleep(0.001)
    return bytes(got)


async def test_gathered_writes_leave_in_one_flush_in_the_order_given() -> None:
    loop = asyncio.get_running_loop()
    mine, peer = socket.socketpair()
    _, connection = await loop.create_connection(lambda: Connection(loop), sock=mine)
    try:
        written: list[bool] = []

        def send() -> None:
            written.append(connection.write_from_thread(b"a"))  # nothing ahead: at once
            for part in (b"b", b"c", b"d"):
                written.append(connection.write_from_thread(part, gather=True))
            written.append(connection.write_from_thread(b"e"))  # behind gathered output

        def send_one(part: bytes) -> Callable[[], None]:
            return lambda: written.append(connection.write_from_thread(part, gather=True))

        in_thread(send)
        assert written == [True] * 5
        assert await received(peer, 1) == b"a"  # the rest waits for the loop's flush
        connection.write(b"L")  # the loop's own write goes behind what threads gathered
        in_thread(send_one(b"f"))
        assert await received(peer, 6) == b"bcdeLf"
        assert not connection._out
    finally:
        connection.abort()
        peer.close()


async def test_gathered_publishes_of_a_lost_connection_are_answered_with_none() -> None:
    loop = asyncio.get_running_loop()
    mine, peer = socket.socketpair()
    _, connection = await loop.create_connection(lambda: Connection(loop), sock=mine)
    channel = connection.channels[1] = Channel(connection, 1)
    channel.confirms = True
    try:
        confirms = []

        def send() -> None:
            for n in range(3):  # the first goes out at once, the others are gathered
                confirms.append(channel.publish_from_thread(b"m%d" % n, f"id-{n}", None))

        in_thread(send)
        assert all(confirm is not None for confirm in confirms)
        assert connection._out  # gathered, not written yet
        connection.connection_lost(None)
        for confirm in confirms:
            assert confirm is not None
            assert confirm.settled
            assert isinstance(confirm.error, ConnectionClosed)  # the publisher sends it again
        assert connection.write_from_thread(b"late", gather=True) is False
    finally:
        connection.abort()
        peer.close()


def test_a_gathered_send_whose_connection_went_unwritten_is_sent_again(
    rabbitmq_url: str,
) -> None:
    queue = f"gathering-{uuid.uuid4().hex}"
    sender = App(
        "sender",
        broker=f"{rabbitmq_url}?reconnect_max_delay=0.2",
        config={"task_ignore_result": True},
    )
    sender.conf.task_default_queue = queue

    async def connection() -> Connection:
        transport = await sender.atransport()
        current = transport._session.connection  # type: ignore[attr-defined]
        assert isinstance(current, Connection)
        return current

    async def drop(lost: Connection) -> None:
        lost.abort()

    async def count() -> int:
        transport = await sender.atransport()
        return (await transport.queue_stats(queue)).ready

    async def delete() -> None:
        transport = await sender.atransport()
        await transport.delete_queue(queue)

    try:
        sent = [sender.send_task("t.n", (n,)).id for n in range(20)]
        sender.flush()
        first = sender.run_sync(connection())
        first.flush = lambda: None  # type: ignore[method-assign]  # gathered output stays put
        sent += [sender.send_task("t.n", (n,)).id for n in range(20, 220)]
        assert first._out  # the sends returned with their messages gathered, unwritten
        sender.run_sync(drop(first))
        sender.flush()
        assert sender.run_sync(connection()) is not first
        assert sender.run_sync(count()) >= len(sent)  # none lost (one may come twice)
    finally:
        sender.run_sync(delete())
        sender.close()
