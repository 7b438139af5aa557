"""Redis in kombu's layout (``layout='kombu'``): kombu's own keys and patterns, the visibility
timeout, what the layout refuses, and the conveyor layout's warnings about kombu's options and
structures."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from kombu.transport.virtual.exchange import TopicExchange

from conveyor.errors import ConfigurationError, ConfigurationWarning, TopologyError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, ExchangeType, Queue
from conveyor.transports import open_transport
from conveyor.transports.redis import RedisTransport
from conveyor.transports.redis import kombu_layout as layout
from conveyor.transports.redis.kombu_transport import KombuRedisTransport
from tests.conftest import redis_namespace


@pytest.mark.parametrize("key", ["celery", "a.*", "a.#", "*.b.#", "a-b.c+d", "#"])
def test_topic_patterns_are_kombus(key: str) -> None:
    assert layout.topic_pattern(key) == TopicExchange(None).key_to_pattern(key)


def test_priority_steps_and_keys_as_the_guide_lists_them() -> None:
    steps = layout.priority_steps(None)
    sep = layout.SEP
    assert layout.queue_keys("celery", steps) == [
        "celery",
        f"celery{sep}3",
        f"celery{sep}6",
        f"celery{sep}9",
    ]
    assert [layout.step_key("q", p, steps) for p in (0, 2, 3, 8, 9, 200)] == [
        "q",
        "q",
        f"q{sep}3",
        f"q{sep}6",
        f"q{sep}9",
        f"q{sep}9",
    ]
    assert layout.priority_steps(list(range(10))) == tuple(range(10))
    assert layout.priority_steps("0,5") == (0, 5)
    with pytest.raises(ConfigurationError, match="priority_steps"):
        layout.priority_steps([1, 2])


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"kombu-test-{uuid.uuid4().hex[:8]}:"
    yield name
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{name}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
async def kombu(redis_url: str, prefix: str) -> AsyncIterator[KombuRedisTransport]:
    transport = open_transport(redis_url, {"layout": "kombu", "global_keyprefix": prefix})
    assert isinstance(transport, KombuRedisTransport)
    await transport.connect()
    yield transport
    await transport.close()


async def test_keys_are_kombus(
    kombu: KombuRedisTransport, prefix: str, sync_redis: redis.Redis
) -> None:
    await kombu.declare_queue(Queue("jobs", Exchange("jobs"), routing_key="jobs"))
    await kombu.publish(Envelope(b"[]", priority=7), exchange="jobs", routing_key="jobs")
    members = sync_redis.smembers(f"{prefix}_kombu.binding.jobs")
    assert members == {f"jobs{layout.SEP}{layout.SEP}jobs".encode()}
    (raw,) = sync_redis.lrange(f"{prefix}jobs{layout.SEP}6", 0, -1)
    message = layout.from_payload(raw)
    assert message.raw["properties"]["delivery_info"] == {"exchange": "jobs", "routing_key": "jobs"}
    assert message.raw["properties"]["body_encoding"] == "base64"
    delivery = await kombu.get("jobs")
    assert delivery is not None
    assert sync_redis.hexists(f"{prefix}unacked", str(delivery.tag))
    assert sync_redis.zscore(f"{prefix}unacked_index", str(delivery.tag)) is not None
    await kombu.ack(delivery)  # written in the background, batched
    deadline = asyncio.get_running_loop().time() + 5
    while sync_redis.hexists(f"{prefix}unacked", str(delivery.tag)):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert sync_redis.zscore(f"{prefix}unacked_index", str(delivery.tag)) is None


async def test_a_delivery_past_the_visibility_timeout_comes_back(
    redis_url: str, prefix: str
) -> None:
    options: dict[str, Any] = {
        "layout": "kombu",
        "global_keyprefix": prefix,
        "visibility_timeout": 1.0,
    }
    dying = open_transport(redis_url, options)
    assert isinstance(dying, KombuRedisTransport)
    await dying.connect()
    await dying.declare_queue(Queue("lost"))
    await dying.publish(Envelope(b"payload"), routing_key="lost")
    taken = await dying.get("lost")
    assert taken is not None
    # The process dies: nothing gives the delivery back or renews it.
    assert dying._housekeeper is not None
    dying._housekeeper.cancel()
    dying._held.clear()
    await dying.close()
    survivor = open_transport(redis_url, options)
    await survivor.connect()
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while (again := await survivor.get("lost")) is None:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        assert again.envelope.body == b"payload"
        assert again.redelivered
        await survivor.ack(again)
    finally:
        await survivor.close()


async def test_a_held_delivery_is_renewed_not_handed_out_twice(redis_url: str, prefix: str) -> None:
    options = {"layout": "kombu", "global_keyprefix": prefix, "visibility_timeout": 1.5}
    holder = open_transport(redis_url, options)
    other = open_transport(redis_url, options)
    await holder.connect()
    await other.connect()
    try:
        await holder.declare_queue(Queue("long"))
        await holder.publish(Envelope(b"slow task"), routing_key="long")
        taken = await holder.get("long")
        assert taken is not None
        await asyncio.sleep(4)  # well past the visibility timeout, still held
        assert await other.get("long") is None
        await holder.ack(taken)
    finally:
        await holder.close()
        await other.close()


async def test_what_kombus_layout_cannot_keep_is_refused(kombu: KombuRedisTransport) -> None:
    with pytest.raises(TopologyError, match="headers exchanges"):
        await kombu.declare_exchange(Exchange("h", ExchangeType.HEADERS))
    with pytest.raises(TopologyError, match="x-message-ttl"):
        await kombu.declare_queue(Queue("ttl", message_ttl=5))


async def test_an_unreadable_message_is_delivered_to_be_dead_lettered(
    kombu: KombuRedisTransport, prefix: str, sync_redis: redis.Redis
) -> None:
    await kombu.declare_queue(Queue("junk"))
    sync_redis.lpush(f"{prefix}junk", b"not json at all")
    delivery = await kombu.get("junk")
    assert delivery is not None
    assert delivery.envelope.body == b"not json at all"
    assert "not a kombu message" in delivery.envelope.headers["x-conveyor-unreadable"]
    await kombu.ack(delivery)


async def test_the_conveyor_layout_takes_the_guides_priority_options_with_a_warning(
    redis_url: str,
) -> None:
    with pytest.warns(ConfigurationWarning, match="layout='kombu'"):
        transport = open_transport(
            redis_url, {"queue_order_strategy": "priority", "priority_steps": list(range(10))}
        )
    assert isinstance(transport, RedisTransport)
    with pytest.raises(ConfigurationError, match=r"'conveyor' .*or 'kombu'"):
        open_transport(redis_url, {"layout": "celery"})


async def test_the_conveyor_layout_warns_about_kombu_structures_it_consumes(
    request: pytest.FixtureRequest, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    url = redis_namespace(request)
    queue = f"kombu-probe-{uuid.uuid4().hex[:8]}"
    sync_redis.lpush(queue, b"{}")
    try:
        transport = open_transport(url)
        await transport.connect()
        try:
            await transport.declare_queue(Queue(queue))
            with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
                consumer = await transport.consume([queue])
            await consumer.cancel()
        finally:
            await transport.close()
    finally:
        sync_redis.delete(queue)
    (record,) = [r for r in caplog.records if "kombu" in r.getMessage()]
    assert repr(queue) in record.getMessage()
    assert "'layout': 'kombu'" in record.getMessage()


async def test_a_reader_cancelled_in_the_middle_of_a_brpop_loses_nothing(
    kombu: KombuRedisTransport,
) -> None:
    await kombu.declare_queue(Queue("waiting"))
    consumer = await kombu.consume(["waiting"], prefetch=1)

    async def read() -> None:
        async for _ in consumer:
            raise AssertionError("the reader was cancelled before anything arrived")

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.3)  # blocked in BRPOP (poll_interval 1 s)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await kombu.publish(Envelope(b"arrives late"), routing_key="waiting")
    await consumer.cancel()  # waits for the BRPOP in flight, which gives the message back
    again = await kombu.get("waiting")
    assert again is not None
    assert again.envelope.body == b"arrives late"
    await kombu.ack(again)
