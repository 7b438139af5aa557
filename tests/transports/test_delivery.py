"""Delivery conformance: order, prefetch, settling, redelivery, purge and stats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from conveyor import Queue
from conveyor.transports import Outgoing

from .conftest import MakeTransport
from .helpers import bodies, drain, env, take


async def test_plain_queue_is_fifo_and_ignores_priority(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("fifo")
    await t.declare_queue(Queue(q))
    for i in range(20):
        await t.publish(env(str(i), priority=i % 5), routing_key=q)
    assert bodies(await drain(t, q)) == [str(i) for i in range(20)]


async def test_priority_queue_orders_high_first_fifo_within_a_level(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("prio")
    await t.declare_queue(Queue(q, max_priority=5))
    sent = [("a", 1), ("b", 5), ("c", 1), ("d", None), ("e", 9), ("f", 5), ("g", 0), ("h", 3)]
    await t.publish_many([Outgoing(env(b, priority=p), routing_key=q) for b, p in sent])
    # 9 is above x-max-priority 5 and counts as 5: e ties with b and f, in publish order
    assert bodies(await drain(t, q)) == ["b", "e", "f", "h", "a", "c", "d", "g"]


async def test_get_returns_none_on_an_empty_queue_and_marks_nothing(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    assert await t.get(q) is None
    await t.publish(env("x"), routing_key=q)
    d = await t.get(q)
    assert d is not None
    assert (d.queue, d.routing_key, d.exchange) == (q, q, "")
    assert (d.redelivered, d.delivery_count) == (False, 1)
    assert (await t.queue_stats(q)).unacked == 1
    await t.ack(d)
    stats = await t.queue_stats(q)
    assert (stats.ready, stats.unacked) == (0, 0)


async def test_consumer_wakes_for_a_message_published_later(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    consumer_side = await make_transport()
    producer = await make_transport()
    q = names("q")
    await consumer_side.declare_queue(Queue(q))
    consumer = await consumer_side.consume([q], prefetch=1)
    waiting = asyncio.create_task(take(consumer, 1, timeout=3))
    await asyncio.sleep(0.1)
    await producer.publish(env("late"), routing_key=q)
    started = asyncio.get_running_loop().time()
    deliveries = await waiting
    assert bodies(deliveries) == ["late"]
    # far below the 1 s fallback poll: the wake-up, not the poll, delivered it
    assert asyncio.get_running_loop().time() - started < 0.5
    await consumer_side.ack(deliveries[0])
    await consumer.cancel()


async def test_prefetch_bounds_unsettled_deliveries(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(10)])
    consumer = await t.consume([q], prefetch=3)
    first = await take(consumer, 3)
    with pytest.raises(TimeoutError):
        await take(consumer, 1, timeout=0.3)
    stats = await t.queue_stats(q)
    assert (stats.ready, stats.unacked) == (7, 3)
    await t.ack(first[0])
    more = await take(consumer, 1)
    assert bodies(first + more) == ["0", "1", "2", "3"]
    await consumer.cancel()


async def test_consumer_takes_from_every_queue(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    a, b = names("a"), names("b")
    await t.declare_queue(Queue(a))
    await t.declare_queue(Queue(b))
    for i in range(3):
        await t.publish(env(f"a{i}"), routing_key=a)
        await t.publish(env(f"b{i}"), routing_key=b)
    consumer = await t.consume([a, b], prefetch=0, no_ack=True)
    got = await take(consumer, 6)
    assert sorted(bodies(got)) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert [x for x in bodies(got) if x[0] == "a"] == ["a0", "a1", "a2"]
    await consumer.cancel()
    assert (await t.queue_stats(a)).unacked == 0


async def test_nack_requeue_redelivers_and_reject_drops(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish(env("again"), routing_key=q)
    first = await t.get(q)
    assert first is not None
    await t.nack(first, requeue=True)
    second = await t.get(q)
    assert second is not None
    assert (second.redelivered, second.delivery_count) == (True, 2)
    await t.reject(second)
    assert await t.get(q) is None
    assert (await t.queue_stats(q)).unacked == 0


async def test_unsettled_deliveries_come_back_when_the_consumer_closes(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    worker = await make_transport()
    observer = await make_transport()
    q = names("q")
    await observer.declare_queue(Queue(q))
    await observer.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(5)])
    consumer = await worker.consume([q], prefetch=5)
    got = await take(consumer, 2)
    await worker.ack(got[0])
    await worker.close()
    back = await drain(observer, q)
    assert sorted(bodies(back)) == ["1", "2", "3", "4"]
    redelivered = {d.envelope.body.decode(): d.redelivered for d in back}
    assert redelivered["1"] is True
    assert next(d for d in back if d.envelope.body == b"1").delivery_count == 2


async def test_cancel_gives_back_prefetched_messages_and_ends_iteration(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(4)])
    consumer = await t.consume([q], prefetch=4)
    (held,) = await take(consumer, 1)
    await consumer.cancel()
    await consumer.cancel()
    assert [d async for d in consumer] == []
    stats = await t.queue_stats(q)
    assert (stats.ready, stats.unacked, stats.consumers) == (3, 1, 0)
    await t.ack(held)
    assert sorted(bodies(await drain(t, q))) == ["1", "2", "3"]


async def test_purge_removes_ready_messages_only(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(5)])
    held = await t.get(q)
    assert held is not None
    assert await t.purge_queue(q) == 4
    stats = await t.queue_stats(q)
    assert (stats.ready, stats.unacked) == (0, 1)
    await t.ack(held)


async def test_stats_count_ready_unacked_and_consumers(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    other = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(3)])
    consumer = await other.consume([q], prefetch=1)
    (d,) = await take(consumer, 1)
    stats = await t.queue_stats(q)
    assert (stats.name, stats.ready, stats.consumers) == (q, 2, 1)
    # RabbitMQ tells only the consuming connection about its unacked deliveries
    assert (await other.queue_stats(q)).unacked == 1
    await other.ack(d)
    await consumer.cancel()
    await other.close()
    stats = await t.queue_stats(q)
    assert (stats.ready, stats.unacked, stats.consumers) == (2, 0, 0)


async def test_ack_many_settles_every_delivery(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(50)])
    consumer = await t.consume([q], prefetch=50)
    got = await take(consumer, 50)
    await t.ack_many(got)
    await t.ack_many(got)
    stats = await t.queue_stats(q)
    assert (stats.ready, stats.unacked) == (0, 0)
    await consumer.cancel()


async def test_deleting_its_queue_ends_a_consumer(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    admin = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    consumer = await t.consume([q])

    async def run() -> list[bytes]:
        return [d.envelope.body async for d in consumer]

    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    await admin.delete_queue(q)
    assert await asyncio.wait_for(task, 5) == []
