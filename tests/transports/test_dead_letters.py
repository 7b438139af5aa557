"""TTL, max-length, dead-lettering with x-death, delivery limit and delayed delivery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from conveyor import Exchange, ExchangeType, Queue
from conveyor.transports import Outgoing, Transport

from .conftest import MakeTransport
from .helpers import bodies, drain, env, eventually_get, take


async def _with_dead_letters(
    t: Transport, names: Callable[[str], str], **queue_options: Any
) -> tuple[str, str, Exchange]:
    dlx = Exchange(names("dlx"), ExchangeType.FANOUT)
    dead = names("dead")
    await t.declare_queue(Queue(dead, exchange=dlx))
    work = names("work")
    args = {"x-dead-letter-exchange": dlx.name, **queue_options.pop("queue_arguments", {})}
    await t.declare_queue(Queue(work, queue_arguments=args, **queue_options))
    return work, dead, dlx


def _death(headers: Any) -> dict[str, Any]:
    deaths = headers["x-death"]
    assert isinstance(deaths, list)
    assert deaths
    first = deaths[0]
    assert isinstance(first, dict)
    return first


async def test_rejected_message_is_dead_lettered_with_x_death(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    work, dead, dlx = await _with_dead_letters(t, names)
    await t.publish(env("bad", headers={"keep": "me"}), routing_key=work)
    d = await t.get(work)
    assert d is not None
    await t.reject(d, requeue=False)
    letter = await eventually_get(t, dead)
    assert letter.envelope.body == b"bad"
    headers = letter.envelope.headers
    assert headers["keep"] == "me"
    death = _death(headers)
    assert (death["reason"], death["queue"], death["count"]) == ("rejected", work, 1)
    assert death["exchange"] == ""
    assert death["routing-keys"] == [work]
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-queue"] == work
    assert letter.exchange == dlx.name
    await t.ack(letter)


async def test_dead_letter_routing_key_replaces_the_original(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    retry = names("retry")
    await t.declare_queue(Queue(retry))
    work = names("work")
    await t.declare_queue(
        Queue(
            work,
            queue_arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": retry},
        )
    )
    await t.publish(env("m"), routing_key=work)
    d = await t.get(work)
    assert d is not None
    await t.nack(d, requeue=False)
    letter = await eventually_get(t, retry)
    assert letter.routing_key == retry
    await t.ack(letter)


async def test_reject_without_dead_letter_exchange_drops(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish(env("m"), routing_key=q)
    d = await t.get(q)
    assert d is not None
    await t.reject(d)
    stats = await t.queue_stats(q)
    assert (stats.ready, stats.unacked) == (0, 0)


async def test_queue_ttl_dead_letters_expired_messages_without_a_consumer(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    work, dead, _ = await _with_dead_letters(t, names, message_ttl=0.15)
    await t.publish(env("old"), routing_key=work)
    letter = await eventually_get(t, dead, timeout=5)
    assert letter.envelope.body == b"old"
    assert _death(letter.envelope.headers)["reason"] == "expired"
    assert (await t.queue_stats(work)).ready == 0
    await t.ack(letter)


async def test_per_message_expiration_and_original_expiration(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    work, dead, _ = await _with_dead_letters(t, names)
    await t.publish(env("short", expiration=0.1), routing_key=work)
    await t.publish(env("long"), routing_key=work)
    letter = await eventually_get(t, dead, timeout=5)
    assert letter.envelope.body == b"short"
    assert letter.envelope.expiration is None
    death = _death(letter.envelope.headers)
    assert death["reason"] == "expired"
    assert death["original-expiration"] == "100"
    assert bodies(await drain(t, work)) == ["long"]
    await t.ack(letter)


async def test_expired_messages_are_never_delivered(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q, message_ttl=0.1))
    await t.publish(env("stale"), routing_key=q)
    await asyncio.sleep(0.25)
    await t.publish(env("fresh"), routing_key=q)
    assert bodies(await drain(t, q)) == ["fresh"]


async def test_max_length_drops_the_head_into_the_dead_letter_queue(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    work, dead, _ = await _with_dead_letters(t, names, max_length=2)
    for i in range(5):
        await t.publish(env(str(i)), routing_key=work)
    assert bodies(await drain(t, work)) == ["3", "4"]
    letters = await drain(t, dead)
    assert bodies(letters) == ["0", "1", "2"]
    assert {_death(d.envelope.headers)["reason"] for d in letters} == {"maxlen"}


async def test_delivery_limit_dead_letters_after_too_many_returns(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    # a quorum queue, so RabbitMQ honours x-delivery-limit too
    work, dead, _ = await _with_dead_letters(
        t, names, queue_arguments={"x-delivery-limit": 1, "x-queue-type": "quorum"}
    )
    await t.publish(env("poison"), routing_key=work)
    counts = []
    while (d := await t.get(work)) is not None:
        counts.append(d.delivery_count)
        await t.nack(d, requeue=True)
    assert counts == [1, 2]
    letter = await eventually_get(t, dead)
    assert _death(letter.envelope.headers)["reason"] == "delivery_limit"
    await t.ack(letter)


async def test_delayed_message_is_invisible_until_due(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish(env("later"), routing_key=q, delay=0.3)
    await t.publish(env("now"), routing_key=q)
    assert bodies(await drain(t, q)) == ["now"]
    assert (await t.queue_stats(q)).unacked == 0
    consumer = await t.consume([q], prefetch=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(take(consumer, 1, timeout=5))
    await asyncio.sleep(0.1)
    assert (await t.queue_stats(q)).unacked == 0  # nobody holds it while it waits
    (d,) = await waiting
    assert d.envelope.body == b"later"
    assert d.delivery_count == 1
    assert loop.time() - started < 1.0
    await t.ack(d)
    await consumer.cancel()


async def test_delayed_messages_join_the_tail_when_due(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    await t.publish_many(
        [
            Outgoing(env("d2"), routing_key=q, delay=0.2),
            Outgoing(env("d1"), routing_key=q, delay=0.1),
        ]
    )
    await asyncio.sleep(0.3)
    await t.publish(env("after"), routing_key=q)
    assert bodies(await drain(t, q)) == ["d1", "d2", "after"]
