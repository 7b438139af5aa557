"""Declaration conformance: idempotence, equivalence errors, passive checks, deletes, bindings,
exclusive and auto-delete queues."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from conveyor import (
    BrokerUnavailable,
    Exchange,
    ExchangeType,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    Queue,
    TopologyError,
)
from conveyor.transports import Transport, open_transport

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
    # no polling meanwhile: a passive declare counts as a use on RabbitMQ
    await asyncio.sleep(0.8)
    with pytest.raises(NotFound):
        await t.queue_stats(q)


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


async def test_auto_delete_exchange_goes_with_its_last_binding(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("auto-ex"), ExchangeType.DIRECT, auto_delete=True)
    a, b = names("a"), names("b")
    await t.declare_queue(Queue(a, exchange=ex, routing_key="k"))
    await t.declare_queue(Queue(b, exchange=ex, routing_key="k"))
    await t.delete_queue(a)
    assert await t.publish(env("still"), exchange=ex.name, routing_key="k") == 1
    await t.unbind_queue(b, ex.name, "k")
    with pytest.raises(NotFound):
        await t.declare_exchange(ex, passive=True)


async def test_using_a_transport_before_connect_is_broker_unavailable(broker_url: str) -> None:
    t = open_transport(broker_url)
    with pytest.raises(BrokerUnavailable):
        await t.declare_queue(Queue("never"))
    with pytest.raises(BrokerUnavailable):
        await t.publish(env("m"), routing_key="never")
    await t.close()


async def test_bad_publish_input_is_refused_and_nothing_is_stored(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    with pytest.raises(ProtocolError):
        await t.publish(b"raw bytes", routing_key=q)  # type: ignore[arg-type]
    with pytest.raises(TopologyError):
        await t.publish(env("m"), routing_key="k" * 256)
    assert (await t.queue_stats(q)).ready == 0
