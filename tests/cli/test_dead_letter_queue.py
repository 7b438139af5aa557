"""Scanning a dead-letter queue keeps it whole and in order; a replay acks only once published."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from conveyor.cli.dead_letter_queue import DeadLetter, replayed_envelope, scanning
from conveyor.errors import NotFound, Unroutable
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Queue
from conveyor.transports import Transport, open_transport


@pytest.fixture
async def transport(broker_url: str) -> AsyncIterator[Transport]:
    transport = open_transport(broker_url)
    await transport.connect()
    yield transport
    await transport.close()


def letter(task_id: str, *, back_to: str) -> Envelope:
    return Envelope(
        b"[[], {}, {}]",
        headers={
            "id": task_id,
            "task": "remote.transcode",
            "x-conveyor-dead-letter-reason": "unknown task",
            "x-conveyor-worker": "w@test",
            "x-conveyor-queue": back_to,
            "x-conveyor-original-exchange": "",
            "x-conveyor-original-routing-key": back_to,
            "x-first-death-reason": "rejected",
        },
    )


async def fail_while_scanning(transport: Transport, queue: str, expected: list[str]) -> None:
    async with scanning(transport, queue) as scan:
        assert [x.id for x in scan.letters] == expected
        raise RuntimeError("the scan's messages go back even on an error")


async def test_a_scan_gives_back_what_it_did_not_settle_in_order(
    transport: Transport, names: Callable[[str], str], forget: list[str]
) -> None:
    dead, work = names("dlq"), names("work")
    forget += [dead, work]
    await transport.declare_queue(Queue(dead))
    await transport.declare_queue(Queue(work))
    for i in range(4):
        await transport.publish(letter(f"t{i}", back_to=work), routing_key=dead)
    async with scanning(transport, dead, limit=3) as scan:
        assert [x.id for x in scan.letters] == ["t0", "t1", "t2"]
        assert (await transport.queue_stats(dead)).ready == 1
        [second] = scan.select(["t1"])
        await scan.replay(second)
        await scan.drop(scan.select(["t2"])[0])
        with pytest.raises(RuntimeError, match="even on an error"):
            await fail_while_scanning(transport, dead, ["t3"])
    async with scanning(transport, dead) as scan:
        assert [x.id for x in scan.letters] == ["t0", "t3"]
        assert [x.delivery.redelivered for x in scan.letters] == [True, True]
    replayed = await transport.get(work, no_ack=True)
    assert replayed is not None
    assert replayed.envelope.headers == {"id": "t1", "task": "remote.transcode"}
    assert (await transport.queue_stats(dead)).ready == 2


async def test_a_replay_to_nowhere_keeps_the_letter(
    transport: Transport, names: Callable[[str], str], forget: list[str]
) -> None:
    dead = names("dlq")
    forget.append(dead)
    await transport.declare_queue(Queue(dead))
    await transport.publish(letter("lost", back_to=names("gone")), routing_key=dead)
    async with scanning(transport, dead) as scan:
        with pytest.raises(Unroutable):
            await scan.replay(scan.letters[0])
    # RabbitMQ answers no basic.nack: the letter given back shows in its counts a moment later.
    for _ in range(100):  # up to 5 s
        if (await transport.queue_stats(dead)).ready == 1:
            break
        await asyncio.sleep(0.05)
    assert (await transport.queue_stats(dead)).ready == 1
    with pytest.raises(NotFound):
        async with scanning(transport, names("missing")):
            pass


@pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)
async def test_broker_dead_letters_read_from_x_death(transport: Transport) -> None:
    envelope = Envelope(
        b"{}",
        headers={
            "x-death": [
                {
                    "queue": "b",
                    "reason": "expired",
                    "exchange": "x2",
                    "routing-keys": ["k2"],
                    "time": 1_800_000_000,
                },
                {"queue": "a", "reason": "rejected", "exchange": "x1", "routing-keys": ["k1"]},
            ],
            "x-first-death-queue": "a",
            "keep": 1,
        },
        message_id="m-1",
    )
    await transport.declare_queue(Queue("plain"))
    await transport.publish(envelope, routing_key="plain")
    delivery = await transport.get("plain", no_ack=True)
    assert delivery is not None
    dead = DeadLetter.from_delivery(delivery)
    assert (dead.id, dead.queue, dead.reason, dead.worker) == ("m-1", "b", "expired", None)
    assert (dead.exchange, dead.routing_key) == ("x1", "k1")
    assert dead.time is not None
    assert dead.time.year == 2027
    assert replayed_envelope(envelope).headers == {"keep": 1}
