"""Publisher confirms on one channel: single and ``multiple`` answers settle exactly the
publishes they name, however they mix."""

from __future__ import annotations

import asyncio
import socket

from conveyor.transports.amqp.channel import Channel
from conveyor.transports.amqp.codec import settle_frame
from conveyor.transports.amqp.connection import Connection
from conveyor.transports.amqp.errors import Nacked


async def test_single_and_multiple_answers_settle_the_publishes_they_name() -> None:
    loop = asyncio.get_running_loop()
    mine, peer = socket.socketpair()
    _, connection = await loop.create_connection(lambda: Connection(loop), sock=mine)
    connection._opened = True
    channel = connection.channels[1] = Channel(connection, 1)
    channel.confirms = True
    try:
        futures = [channel.publish(b"frames", f"id-{tag}") for tag in range(1, 13)]

        def answer(method: int, tag: int, multiple: bool) -> None:
            connection.data_received(settle_frame(1, method, tag, 1 if multiple else 0))

        answer(80, 2, multiple=False)  # an ack of 2 alone
        answer(80, 4, multiple=True)  # 1, 3 and 4
        answer(120, 6, multiple=False)  # a nack of 6 alone
        channel.abandon(7)  # given up on: its answer settles nothing
        answer(80, 9, multiple=True)  # 5, 8 and 9
        answer(80, 9, multiple=True)  # again: nothing more
        answer(120, 11, multiple=True)  # 10 and 11 refused
        done = [tag for tag, future in enumerate(futures, start=1) if future.done()]
        assert done == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
        assert all(futures[tag - 1].result() is True for tag in (1, 2, 3, 4, 5, 8, 9))
        for tag in (6, 10, 11):
            assert isinstance(futures[tag - 1].exception(), Nacked)
        assert not futures[6].done()
        assert not futures[11].done()
        assert channel.in_flight("id-12") is futures[11]
        assert channel.in_flight("id-9") is None
        answer(80, 12, multiple=True)
        assert futures[11].result() is True
        assert not channel._unconfirmed
        assert not futures[6].done()  # abandoned: left to whoever gave up on it
        futures[6].cancel()
    finally:
        connection.abort()
        peer.close()
