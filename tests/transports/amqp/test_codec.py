"""The AMQP wire layer: frames stay whole and in order however the socket splits the bytes."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

from conveyor.transports.amqp.channel import Channel
from conveyor.transports.amqp.codec import Message, encode_properties, shortstr
from conveyor.transports.amqp.connection import Connection
from tests.transports.helpers import env


def delivery_frames(tag: int, body: bytes) -> bytes:
    """basic.deliver on channel 1 for consumer ``c``, its content header and one body frame."""
    envelope = env(body, headers={"n": tag, "name": f"message {tag}", "flag": tag % 2 == 0})
    flags, properties = encode_properties(envelope, envelope.headers, f"m.{tag}")
    method = (
        struct.pack(">HH", 60, 60)
        + shortstr("c", "")
        + struct.pack(">QB", tag, 0)
        + shortstr("ex", "")
        + shortstr("key", "")
    )
    header = struct.pack(">HHQH", 60, 0, len(body), flags) + properties
    return b"".join(
        struct.pack(">BHI", kind, 1, len(payload)) + payload + b"\xce"
        for kind, payload in ((1, method), (2, header), (3, body))
    )


async def test_deliveries_split_anywhere_by_the_socket_arrive_whole_and_in_order() -> None:
    connection = Connection(asyncio.get_running_loop())
    connection._opened = True
    channel = connection.channels[1] = Channel(connection, 1)
    received: list[Message] = []
    channel.consumers["c"] = received.append
    stream = b"".join(delivery_frames(tag, f"body {tag}".encode() * tag) for tag in range(1, 301))
    rng = random.Random(7)
    pos = 0
    while pos < len(stream):
        size = rng.choice([1, 2, 7, 8, 9, 40, 333, 4096])
        connection.data_received(stream[pos : pos + size])
        pos += size
    assert [m.delivery_tag for m in received] == list(range(1, 301))
    for tag, message in enumerate(received, start=1):
        assert message.body == f"body {tag}".encode() * tag
        assert (message.exchange, message.routing_key, message.properties.message_id) == (
            "ex",
            "key",
            f"m.{tag}",
        )
        headers = message.properties.headers
        assert headers == {"n": tag, "name": f"message {tag}", "flag": tag % 2 == 0}
    assert not connection._buffer


async def test_a_thread_write_the_socket_cannot_take_at_once_stays_ahead_of_later_writes() -> None:
    loop = asyncio.get_running_loop()
    mine, peer = socket.socketpair()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    _, connection = await loop.create_connection(lambda: Connection(loop), sock=mine)
    try:
        big = bytes(random.getrandbits(8) for _ in range(1 << 20))  # far over the socket buffer
        assert await asyncio.to_thread(connection.write_from_thread, big)
        # Queued behind the rest of it: a thread write now is refused, a loop write waits.
        assert not await asyncio.to_thread(connection.write_from_thread, b"refused")
        connection.write(b"after")
        peer.setblocking(False)
        received = bytearray()
        while len(received) < len(big) + 5:
            try:
                received += peer.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert bytes(received) == big + b"after"
    finally:
        connection.abort()
        peer.close()


def test_header_entries_remembered_between_messages_are_only_reused_for_the_same_value() -> None:
    from conveyor.transports.amqp.codec import _table, encode_table

    def decoded(table: dict[str, object]) -> dict[str, object]:
        return _table(encode_table(table), 0)[0]

    shared = ["a"]
    assert decoded({"h": "one", "n": 1, "l": shared}) == {"h": "one", "n": 1, "l": ["a"]}
    shared.append("b")  # the same list, changed: encoded afresh
    assert decoded({"h": "two", "n": True, "l": shared}) == {"h": "two", "n": True, "l": ["a", "b"]}
    assert decoded({"h": "two", "n": 1, "l": None}) == {"h": "two", "n": 1, "l": None}
    assert decoded({"n": 2**40, "h": 2.5}) == {"n": 2**40, "h": 2.5}
    assert decoded({"n": 2**40, "h": 2.5}) == {"n": 2**40, "h": 2.5}


def test_publish_frames_hold_the_body_in_frames_of_at_most_frame_max() -> None:
    from conveyor.transports.amqp.codec import message_frames

    envelope = env(b"x")
    flags, properties = encode_properties(envelope, envelope.headers, "m.1")
    for size in (0, 1, 10, 11, 25):
        body = bytes(range(size))
        data = message_frames(3, 10, "ex", "key", True, properties, flags, body)
        frames = []
        pos = 0
        while pos < len(data):
            kind, channel, length = struct.unpack_from(">BHI", data, pos)
            assert channel == 3
            assert data[pos + 7 + length] == 0xCE
            frames.append((kind, data[pos + 7 : pos + 7 + length]))
            pos += 8 + length
        method, header, *bodies = frames
        assert method == (1, struct.pack(">HHH", 60, 40, 0) + b"\x02ex\x03key\x01")
        assert header == (2, struct.pack(">HHQH", 60, 0, size, flags) + properties)
        assert [kind for kind, _ in bodies] == [3] * len(bodies)
        assert all(len(chunk) <= 10 for _, chunk in bodies)
        assert b"".join(chunk for _, chunk in bodies) == body
        assert len(bodies) == -(-size // 10)
