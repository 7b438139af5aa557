"""Declaration conformance: idempotence, equivalence errors, passive checks, deletes, bindings,
exclusive and auto-delete queues."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from conveyor import Exchange, ExchangeType, NotFound, PreconditionFailed, Queue
from conveyor.transports import Transport

from .conftest import MakeTransport
from .helpers import bodies, drain, env


async def test_declaring_twice_the_same_way_is_a_no_op(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("ex"), ExchangeType.TOPIC)
    q = Queue(names("q"), exchange=ex, routing_key="a.*", max_priority=3)
    await t.declare_queue(q)
    await t.publish(env("kept"), exchange=ex.name, routing_key="a.b")
    stats = await t.declare_queue(q)
    await t.declare_exchange(ex)
    assert stats.ready == 1
    assert bodies(await drain(t, q.name)) == ["kept"]


async def test_redeclaring_a_queue_differently_names_both_definitions(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    name = names("q")
    await t.declare_queue(Queue(name, max_priority=5))
    with pytest.raises(PreconditionFailed) as info:
        await t.declare_queue(Queue(name, max_priority=9))
    text = str(info.value)
    assert name in text
    rest = text.replace(name, "")
    assert "x-max-priority" in rest
    assert "5" in rest
    assert "9" in rest


async def test_redeclaring_an_exchange_with_another_type_fails(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    name = names("ex")
    await t.declare_exchange(Exchange(name, ExchangeType.DIRECT))
    with pytest.raises(PreconditionFailed) as info:
        await t.declare_exchange(Exchange(name, ExchangeType.FANOUT))
    assert name in str(info.value)


async def test_passive_declares_check_existence(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    with pytest.raises(NotFound):
        await t.declare_queue(Queue(names("missing")), passive=True)
    t2 = await make_transport()
    with pytest.raises(NotFound):
        await t2.declare_exchange(Exchange(names("missing"), ExchangeType.DIRECT), passive=True)
    q = names("q")
    await t2.declare_queue(Queue(q))
    stats = await t2.declare_queue(Queue(q), passive=True)
    assert (stats.ready, stats.unacked) == (0, 0)


async def test_binding_to_a_missing_exchange_is_not_found(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    with pytest.raises(NotFound):
        await t.bind_queue(q, names("no-exchange"), "k")


async def test_bind_and_unbind_change_routing(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("ex"), ExchangeType.DIRECT)
    q = names("q")
    await t.declare_exchange(ex)
    await t.declare_queue(Queue(q))
    await t.bind_queue(q, ex.name, "k")
    await t.bind_queue(q, ex.name, "k")
    assert await t.publish(env("1"), exchange=ex.name, routing_key="k") == 1
    await t.unbind_queue(q, ex.name, "k")
    await t.unbind_queue(q, ex.name, "k")
    assert await t.publish(env("2"), exchange=ex.name, routing_key="k") == 0
    assert bodies(await drain(t, q)) == ["1"]


async def test_delete_queue_returns_its_message_count_and_removes_it(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    for i in range(3):
        await t.publish(env(str(i)), routing_key=q)
    with pytest.raises(PreconditionFailed):
        await t.delete_queue(q, if_empty=True)
    assert await t.delete_queue(q) == 3
    assert await t.publish(env("gone"), routing_key=q) == 0
    with pytest.raises(NotFound):
        await t.queue_stats(q)


async def test_delete_exchange_if_unused(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("ex"), ExchangeType.FANOUT)
    q = names("q")
    await t.declare_queue(Queue(q, exchange=ex))
    with pytest.raises(PreconditionFailed):
        await t.delete_exchange(ex.name, if_unused=True)
    await t.delete_exchange(ex.name)
    with pytest.raises(NotFound):
        await t.publish(env("m"), exchange=ex.name)
    assert (await t.queue_stats(q)).ready == 0


async def test_exclusive_queue_belongs_to_its_connection_and_goes_with_it(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    owner = await make_transport()
    other = await make_transport()
    q = names("excl")
    await owner.declare_queue(Queue(q, exclusive=True, durable=False, auto_delete=False))
    await owner.publish(env("mine"), routing_key=q)
    with pytest.raises(PreconditionFailed):
        await other.get(q)
    with pytest.raises(PreconditionFailed):
        await other.declare_queue(Queue(q, exclusive=True, durable=False))
    await owner.close()
    await _eventually_missing(other, q)


async def test_auto_delete_queue_goes_when_its_last_consumer_leaves(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("auto")
    await t.declare_queue(Queue(q, auto_delete=True, durable=False))
    await t.publish(env("m"), routing_key=q)
    assert await t.get(q, no_ack=True) is not None  # get alone never deletes it
    first = await t.consume([q])
    second = await t.consume([q])
    await first.cancel()
    assert (await t.queue_stats(q)).consumers == 1
    await second.cancel()
    await _eventually_missing(t, q)


async def test_queue_expires_when_unused(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("expiring")
    await t.declare_queue(Queue(q, expires=0.2))
    await t.publish(env("m"), routing_key=q)
    await _eventually_missing(t, q, timeout=5.0)


async def _eventually_missing(t: Transport, queue: str, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            await t.queue_stats(queue)
        except NotFound:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"queue {queue!r} still exists after {timeout}s")
