"""RabbitMQ transport: what only a real RabbitMQ shows (the conformance suite covers the rest).

Every test makes uniquely named entities on the shared broker and deletes them at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conveyor import Envelope, Exchange, ExchangeType, Queue
from conveyor.errors import (
    BrokerUnavailable,
    ConfigurationError,
    NotFound,
    PreconditionFailed,
    TopologyError,
    TransportError,
    Unroutable,
)
from conveyor.transports import Delivery, Outgoing, open_transport
from conveyor.transports.amqp import DIRECT_REPLY_TO, AMQPTransport
from conveyor.transports.amqp.channel import Channel
from conveyor.transports.amqp.errors import ChannelClosed
from conveyor.transports.amqp.session import ChannelRole
from conveyor.transports.base import Published, Wakeup
from tests.rabbitmqctl import close_connections_named, needs_rabbitmqctl, rabbitmqctl
from tests.transports.conftest import forget_declared
from tests.transports.helpers import bodies, drain, env, take

MakeAMQP = Callable[..., Awaitable[AMQPTransport]]


@pytest.fixture
async def make_amqp(rabbitmq_url: str) -> AsyncIterator[MakeAMQP]:
    """Factory of connected RabbitMQ transports, closed and cleaned up after the test."""
    made: list[AMQPTransport] = []

    async def make(url: str | None = None, **options: Any) -> AMQPTransport:
        transport = AMQPTransport.from_url(url or rabbitmq_url, options)
        await transport.connect()
        made.append(transport)
        return transport

    yield make
    for transport in reversed(made):
        await transport.close()
    for transport in made:
        await forget_declared(transport)


@pytest.fixture
def name() -> Callable[[str], str]:
    run = uuid.uuid4().hex[:10]
    return lambda prefix: f"amqp-test.{prefix}.{run}"


def test_url_and_options_are_parsed_and_checked() -> None:
    t = AMQPTransport.from_url(
        "amqp://bob:s%40cret@rabbit.example:5673/prod%2Fjobs?heartbeat=5", {"confirm_timeout": 3}
    )
    assert t._options.heartbeat == 5
    assert t._options.confirm_timeout == 3
    assert (t._address.user, t._address.password) == ("bob", "s@cret")
    assert (t._address.host, t._address.port, t._address.vhost) == (
        "rabbit.example",
        5673,
        "prod/jobs",
    )
    assert "s@cret" not in t._display
    assert "prod/jobs" in t._display
    assert AMQPTransport.from_url("amqps://h/?verify=false")._options.ssl_context is not None
    with pytest.raises(ConfigurationError, match="unknown RabbitMQ transport option 'hearbeat'"):
        AMQPTransport.from_url("amqp://h/?hearbeat=5")
    with pytest.raises(ConfigurationError, match="must be a number"):
        AMQPTransport.from_url("amqp://h/", {"reconnect_timeout": "soon"})
    with pytest.raises(ConfigurationError, match="TLS files"):
        AMQPTransport.from_url("amqps://h/", {"cafile": "/nonexistent/ca.pem"})
    assert isinstance(open_transport("amqps://h/?verify=0"), AMQPTransport)


async def test_unreachable_broker_and_bad_login_are_broker_unavailable(rabbitmq_url: str) -> None:
    with pytest.raises(
        BrokerUnavailable, match=r"cannot reach RabbitMQ at amqp://guest@127\.0\.0\.1:1/"
    ):
        await AMQPTransport.from_url("amqp://127.0.0.1:1/", {"connect_timeout": 2}).connect()
    wrong = rabbitmq_url.replace("guest:guest@", "guest:wrong@")
    with pytest.raises(BrokerUnavailable, match="refused the login"):
        await AMQPTransport.from_url(wrong).connect()
    unopened = AMQPTransport.from_url(rabbitmq_url)
    with pytest.raises(BrokerUnavailable, match="call connect"):
        await unopened.queue_stats("anything")


async def test_inequivalent_queue_arguments_name_both_sets_and_the_fix(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    q = name("prio")
    await t.declare_queue(Queue(q, max_priority=5))
    with pytest.raises(PreconditionFailed) as info:
        await t.declare_queue(Queue(q, max_priority=9, message_ttl=60))
    text = str(info.value)
    assert repr(q) in text
    assert "RabbitMQ has durable=True, auto_delete=False, arguments={'x-max-priority': 5}" in text
    assert "asks for durable=True, auto_delete=False, arguments={'x-max-priority': 9, " in text
    assert "'x-message-ttl': 60000}" in text
    assert "Delete the queue" in text
    # The channel RabbitMQ closed is reopened without the caller noticing.
    assert (await t.declare_queue(Queue(q, max_priority=5))).ready == 0


async def test_inequivalent_exchange_and_invalid_arguments(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    ex = name("ex")
    await t.declare_exchange(Exchange(ex, ExchangeType.TOPIC))
    with pytest.raises(
        PreconditionFailed, match=r"RabbitMQ has type='topic'.*asks for type='fanout'"
    ):
        await t.declare_exchange(Exchange(ex, ExchangeType.FANOUT))
    with pytest.raises(TopologyError, match="x-delivery-limit needs 'x-queue-type': 'quorum'"):
        await t.declare_queue(Queue(name("classic"), queue_arguments={"x-delivery-limit": 2}))
    with pytest.raises(NotFound):
        await t.declare_queue(Queue(name("missing")), passive=True)
    with pytest.raises(NotFound):
        await t.purge_queue(name("missing"))
    assert await t.delete_queue(name("missing")) == 0
    await t.unbind_queue(name("missing"), ex, "k")
    with pytest.raises(TopologyError, match="default exchange"):
        await t.bind_queue(name("any"), "", "k")


async def test_quorum_queue_counts_deliveries_and_dead_letters_past_the_limit(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    dead = name("dead")
    await t.declare_queue(Queue(dead))
    q = name("quorum")
    await t.declare_queue(
        Queue(
            q,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": 2,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead,
            },
        )
    )
    await t.publish(env("again"), routing_key=q)
    counts = []
    for _ in range(3):
        delivery = await t.get(q)
        assert delivery is not None
        counts.append(delivery.delivery_count)
        await t.nack(delivery, requeue=True)
    assert counts == [1, 2, 3]
    for _ in range(50):
        if (await t.queue_stats(dead)).ready:
            break
        await asyncio.sleep(0.05)
    assert bodies(await drain(t, dead)) == ["again"]


async def test_properties_and_headers_travel_unchanged(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    q = name("props")
    await t.declare_queue(Queue(q, max_priority=10))
    sent = Envelope(
        body=b"\x00binary\xff",
        headers={
            "float": 0.1,
            "big": 2**40,
            "neg": -7,
            "flag": False,
            "none": None,
            "text": "ünïcode",
            "nested": {"list": [1, "two", {"three": 3.5}], "empty": []},
        },
        content_type="application/x-custom",
        content_encoding="binary",
        correlation_id="corr-1",
        reply_to="replies",
        priority=7,
        expiration=30.5,
        message_id="m-1",
        timestamp=1_700_000_000.0,
        type="task",
        app_id="tests",
        delivery_mode=1,
    )
    await t.publish(sent, routing_key=q)
    got = await t.get(q, no_ack=True)
    assert got is not None
    assert got.envelope == sent
    assert got.delivery_count == 1
    assert not got.redelivered
    assert (got.exchange, got.routing_key, got.queue) == ("", q, q)


async def test_publish_many_pipelines_confirms_and_a_bad_exchange_hurts_only_its_message(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    q = name("many")
    await t.declare_queue(Queue(q))
    counts = await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(2000)])
    assert counts == [1] * 2000
    assert (await t.queue_stats(q)).ready == 2000
    results = await asyncio.gather(
        *(t.publish(env("ok"), routing_key=q) for _ in range(50)),
        t.publish(env("lost"), exchange=name("nowhere")),
        *(t.publish(env("ok"), routing_key=q) for _ in range(50)),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results].count("NotFound") == 1
    assert results.count(1) == 100
    assert (await t.queue_stats(q)).ready == 2100


async def test_returns_are_matched_to_their_own_publish_with_the_same_message_id(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    ex = Exchange(name("direct"), ExchangeType.DIRECT)
    q = name("q")
    await t.declare_queue(Queue(q, exchange=ex, routing_key="yes"))
    same = env("twin", message_id="same-id")
    routed, unroutable = await asyncio.gather(
        t.publish(same, exchange=ex.name, routing_key="yes", mandatory=True),
        t.publish(same, exchange=ex.name, routing_key="no", mandatory=True),
        return_exceptions=True,
    )
    assert routed == 1
    assert isinstance(unroutable, Unroutable)
    assert unroutable.routing_key == "no"


async def test_prefetch_is_per_consumer_and_works_with_quorum_queues(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    other = await make_amqp()
    q = name("quorum")
    await t.declare_queue(Queue(q, queue_arguments={"x-queue-type": "quorum"}))
    await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(5)])
    consumer = await t.consume([q], prefetch=2)
    held = await take(consumer, 2)
    await asyncio.sleep(0.2)
    # RabbitMQ itself holds back the rest: another client can take them.
    assert len(bodies(await drain(other, q))) == 3
    await t.ack_many(held)
    await consumer.cancel()


async def test_prefetch_bounds_deliveries_handed_out_across_queues(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    a, b = name("a"), name("b")
    for q in (a, b):
        await t.declare_queue(Queue(q))
        await t.publish_many([Outgoing(env(q), routing_key=q) for _ in range(3)])
    consumer = await t.consume([a, b], prefetch=2)
    first = await take(consumer, 2)
    with pytest.raises(asyncio.TimeoutError):
        await take(consumer, 1, timeout=0.3)
    await t.ack(first[0])
    (third,) = await take(consumer, 1)
    await t.ack_many([first[1], third])
    rest = await take(consumer, 2)
    await t.ack_many(rest)
    (last,) = await take(consumer, 1)
    await t.ack(last)
    await consumer.cancel()


async def test_acks_in_any_order_settle_every_delivery(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    q = name("acks")
    await t.declare_queue(Queue(q))
    await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(200)])
    consumer = await t.consume([q], prefetch=200)
    deliveries = await take(consumer, 200)
    assert (await t.queue_stats(q)).unacked == 200
    for delivery in deliveries[1::2] + deliveries[0::2]:
        await t.ack(delivery)
    await t.ack(deliveries[0])  # twice: a no-op
    await consumer.cancel()
    await t.close()
    checker = await make_amqp()
    stats = await checker.queue_stats(q)
    assert (stats.ready, stats.unacked) == (0, 0)


async def test_cancel_requeues_prefetched_and_keeps_yielded_deliveries_settleable(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    q = name("cancel")
    await t.declare_queue(Queue(q))
    await t.publish_many([Outgoing(env(str(i)), routing_key=q) for i in range(5)])
    consumer = await t.consume([q], prefetch=5)
    (first,) = await take(consumer, 1)
    await asyncio.sleep(0.1)
    await consumer.cancel()
    await asyncio.sleep(0.1)
    assert (await t.queue_stats(q)).ready == 4
    await t.ack(first)
    rest = await drain(t, q)
    assert sorted(bodies(rest)) == ["1", "2", "3", "4"]
    assert all(d.redelivered for d in rest)


async def _arrivals(
    t: AMQPTransport, queue: str, n: int, timeout: float
) -> list[tuple[Delivery, float]]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    got: list[tuple[Delivery, float]] = []
    async with await t.consume([queue], prefetch=50) as consumer:

        async def collect() -> None:
            async for delivery in consumer:
                got.append((delivery, loop.time() - start))
                await t.ack(delivery)
                if len(got) == n:
                    return

        await asyncio.wait_for(collect(), timeout)
    return got


async def test_delayed_messages_wait_in_no_consumer_and_arrive_when_due(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    ex = Exchange(name("topic"), ExchangeType.TOPIC)
    q = name("due")
    await t.declare_queue(Queue(q, exchange=ex, routing_key="jobs.#", max_priority=5))
    # Published longest first: a short delay must not wait behind a long one.
    await t.publish(
        env("slow", headers={"k": "v"}, priority=4, expiration=60),
        exchange=ex.name,
        routing_key="jobs.slow",
        delay=1.2,
    )
    await t.publish(env("fast"), exchange=ex.name, routing_key="jobs.fast", delay=0.3)
    await t.publish(env("direct"), routing_key=q, delay=0.7)
    assert (await t.queue_stats(q)).ready == 0
    got = await _arrivals(t, q, 3, timeout=5)
    assert bodies([d for d, _ in got]) == ["fast", "direct", "slow"]
    for (_, at), due in zip(got, (0.3, 0.7, 1.2), strict=True):
        assert due - 0.05 <= at <= due + 1.5  # generous: the shared machine is busy
    slow = got[2][0]
    assert dict(slow.envelope.headers) == {"k": "v"}  # no delay headers, no x-death
    assert (slow.envelope.priority, slow.envelope.expiration) == (4, 60)
    assert (slow.exchange, slow.routing_key, slow.redelivered) == (ex.name, "jobs.slow", False)
    assert (got[1][0].exchange, got[1][0].routing_key) == ("", q)


async def test_delayed_publish_to_missing_targets(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    with pytest.raises(NotFound):
        await t.publish(env("m"), exchange=name("nope"), delay=0.1)
    assert await t.publish(env("m"), routing_key=name("no-queue"), delay=0.1) == 0
    with pytest.raises(Unroutable):
        await t.publish(env("m"), routing_key=name("no-queue"), delay=0.1, mandatory=True)
    with pytest.raises(ConfigurationError, match="longer than RabbitMQ delays reach"):
        await t.publish(env("m"), routing_key=name("q"), delay=60 * 86400)


async def test_direct_reply_to_round_trip(
    make_amqp: MakeAMQP, name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_amqp()
    server = await make_amqp()
    q = name("requests")
    await server.declare_queue(Queue(q))
    replies = await client.consume([DIRECT_REPLY_TO], no_ack=True)
    await client.publish(env("ping", reply_to=DIRECT_REPLY_TO, correlation_id="c-1"), routing_key=q)
    (request,) = await drain(server, q)
    assert request.envelope.body == b"ping"
    reply_to = request.envelope.reply_to
    assert reply_to is not None
    assert reply_to.startswith(DIRECT_REPLY_TO + ".")
    assert await server.publish(env("pong", correlation_id="c-1"), routing_key=reply_to) == 1
    (reply,) = await take(replies, 1)
    assert (reply.envelope.body, reply.envelope.correlation_id) == (b"pong", "c-1")
    # A reply is done once written (RabbitMQ stores nothing for it): with confirms no longer
    # reaching the server, replies still go, while anything stored waits for its confirm.
    monkeypatch.setattr(Channel, "_confirmed", lambda *args: None)
    again = env("pong again", correlation_id="c-1")
    assert await asyncio.wait_for(server.publish(again, routing_key=reply_to), 2) == 1
    (reply,) = await take(replies, 1)
    assert reply.envelope.body == b"pong again"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(server.publish(env("stored"), routing_key=q), 0.3)
    await replies.cancel()
    with pytest.raises(ConfigurationError, match="no_ack=True"):
        await client.consume([DIRECT_REPLY_TO])


async def test_replies_written_from_threads_interleave_with_the_loop_cleanly(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    client = await make_amqp()
    server = await make_amqp()
    q, busy = name("requests"), name("busy")
    for queue in (q, busy):
        await server.declare_queue(Queue(queue))
    replies = await client.consume([DIRECT_REPLY_TO], no_ack=True)
    await client.publish(env("ping", reply_to=DIRECT_REPLY_TO), routing_key=q)
    (request,) = await drain(server, q)
    reply_to = request.envelope.reply_to
    assert reply_to is not None
    # Only replies to direct reply-to, and only once the loop has opened their channel.
    assert not await asyncio.to_thread(server.publish_from_thread, env("x"), routing_key=q)
    assert not await asyncio.to_thread(server.publish_from_thread, env("x"), routing_key=reply_to)
    assert await server.publish(env("first"), routing_key=reply_to) == 1

    def send(first: int) -> list[str]:
        written = []
        for n in range(first, first + 200):
            body = f"r{n}"
            if server.publish_from_thread(env(body), routing_key=reply_to):
                written.append(body)
        return written

    # Four threads write replies while the loop publishes to a queue on the same connection.
    threads = asyncio.gather(*(asyncio.to_thread(send, k * 200) for k in range(4)))
    for n in range(200):
        await server.publish(env(f"b{n}"), routing_key=busy)
    written = [body for part in await threads for body in part]
    assert written  # most go straight out; one that meets queued output is left to the loop
    got = bodies(await take(replies, 1 + len(written), timeout=20))
    assert got[0] == "first"
    assert sorted(got[1:]) == sorted(written)  # every frame whole, none twice
    assert sorted(bodies(await drain(server, busy))) == sorted(f"b{n}" for n in range(200))
    await replies.cancel()


async def test_confirmed_publishes_from_threads_get_their_own_answers(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    ex = Exchange(name("ex"), ExchangeType.DIRECT, durable=False, auto_delete=True)
    q = name("q")
    await t.declare_queue(Queue(q, exchange=ex, routing_key="k", durable=False))

    def publish(body: str, key: str = "k", **options: Any) -> Published | None:
        return t.publish_from_thread(env(body), exchange=ex.name, routing_key=key, **options)

    # Not before the loop has opened the publish channel and met the exchange.
    assert await asyncio.to_thread(publish, "too early") is None
    assert await t.publish(env("first"), exchange=ex.name, routing_key="k") == 1
    own_id = env("own id", message_id="m-1")
    assert (
        await asyncio.to_thread(
            lambda: t.publish_from_thread(own_id, exchange=ex.name, routing_key="k")
        )
        is None
    )

    def send(first: int) -> list[tuple[str, int | None]]:
        answers = []
        for n in range(first, first + 100):
            key = "k" if n % 10 else "nowhere"  # every tenth reaches no queue
            wakeup = Wakeup()
            published = publish(f"t{n}", key, mandatory=True, wakeup=wakeup)
            if published is None:
                continue  # met output the loop had queued: the loop would send it
            assert wakeup.wait(10)
            assert published.done
            if key == "k":
                answers.append((f"t{n}", published.result()))
            else:
                with pytest.raises(Unroutable, match="'nowhere'"):
                    published.result()
                answers.append((f"t{n}", 0))
        return answers

    # Three threads publish with confirms while the loop publishes on the same channel: every
    # confirm and every return reaches the publish it belongs to.
    threads = asyncio.gather(*(asyncio.to_thread(send, k * 100) for k in range(3)))
    loop_sent = [
        await t.publish(env(f"l{n}"), exchange=ex.name, routing_key="k" if n % 10 else "nowhere")
        for n in range(100)
    ]
    answers = [answer for part in await threads for answer in part]
    assert len(answers) > 200  # most go straight out
    assert all(result == (0 if int(body[1:]) % 10 == 0 else 1) for body, result in answers)
    assert loop_sent == [0 if n % 10 == 0 else 1 for n in range(100)]
    expected = {"first"} | {f"l{n}" for n in range(100) if n % 10}
    expected |= {body for body, result in answers if result == 1}
    assert sorted(bodies(await drain(t, q))) == sorted(expected)


async def test_a_thread_publish_whose_channel_goes_is_left_to_the_loop(
    make_amqp: MakeAMQP, name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    t = await make_amqp()
    q = name("q")
    await t.declare_queue(Queue(q, durable=False))
    assert await t.publish(env("first"), routing_key=q) == 1
    with monkeypatch.context() as patch:
        patch.setattr(Channel, "_confirmed", lambda *args: None)  # confirms stop coming
        wakeup = Wakeup()
        published = await asyncio.to_thread(
            lambda: t.publish_from_thread(env("second"), routing_key=q, wakeup=wakeup)
        )
        assert published is not None
        assert not published.done
        assert not await asyncio.to_thread(wakeup.wait, 0.2)
        t._session.shared[ChannelRole.PUBLISH].raw.fail(ChannelClosed(504, "gone"))
        assert await asyncio.to_thread(wakeup.wait, 1)
        assert published.done
        assert published.result() is None  # may or may not be stored: publish it again
        late = await asyncio.to_thread(lambda: t.publish_from_thread(env("3"), routing_key=q))
        assert late is None  # not on a channel that is gone
        assert isinstance(published.expire(), TransportError)
    assert await t.publish(env("fourth"), routing_key=q) == 1
    assert "fourth" in bodies(await drain(t, q))


@needs_rabbitmqctl
async def test_a_direct_reply_to_consumer_comes_back_after_a_lost_connection(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    client_name = f"conveyor-test-{uuid.uuid4().hex}"
    client = await make_amqp(client_name=client_name, reconnect_max_delay=0.5)
    server = await make_amqp()
    q = name("requests")
    await server.declare_queue(Queue(q, durable=False))
    replies = await client.consume([DIRECT_REPLY_TO], no_ack=True)
    started = asyncio.get_running_loop().time()
    assert await asyncio.to_thread(close_connections_named, client_name) == 1
    # Its channel (the publishing one) went with the connection; the supervisor opens it again
    # and resubscribes, and nothing else spins or holds the consumer meanwhile.
    await client.publish(env("ping", reply_to=DIRECT_REPLY_TO), routing_key=q)
    (request,) = await drain(server, q)
    assert request.envelope.reply_to is not None
    await server.publish(env("pong"), routing_key=request.envelope.reply_to)
    (reply,) = await take(replies, 1)
    assert reply.envelope.body == b"pong"
    await replies.cancel()
    await client.close()
    assert asyncio.get_running_loop().time() - started < 10


@needs_rabbitmqctl
async def test_lost_connection_reconnects_resubscribes_and_publishers_wait(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    client_name = f"conveyor-test-{uuid.uuid4().hex}"
    t = await make_amqp(client_name=client_name, reconnect_max_delay=0.5)
    ex = Exchange(name("ex"), ExchangeType.DIRECT, durable=False, auto_delete=True)
    q = name("q")
    await t.declare_queue(Queue(q, exchange=ex, routing_key="k", durable=False, exclusive=True))
    consumer = await t.consume([q], prefetch=10)
    await t.publish(env("before"), exchange=ex.name, routing_key="k")
    (before,) = await take(consumer, 1)

    assert await asyncio.to_thread(close_connections_named, client_name) == 1
    # The exclusive queue and auto-delete exchange died with the connection; the publish waits
    # for the reconnect, which declares both again, and the consumer is subscribed again.
    assert await t.publish(env("after"), exchange=ex.name, routing_key="k") == 1
    await t.ack(before)  # its channel is gone: a no-op, not an error
    (after,) = await take(consumer, 1, timeout=10)
    assert after.envelope.body == b"after"
    await t.ack(after)
    await consumer.cancel()


def suspend_queue_process(vhost: str, queue: str, *, resume: bool = False) -> None:
    """Suspend (or resume) the Erlang process of a RabbitMQ queue: it confirms nothing while
    suspended."""
    expr = (
        f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, <<"{queue}">>)),'
        f" sys:{'resume' if resume else 'suspend'}(amqqueue:get_pid(Q))."
    )
    rabbitmqctl("eval", expr)


@needs_rabbitmqctl
async def test_a_publish_that_is_never_confirmed_fails_after_confirm_timeout(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp(confirm_timeout=1)
    stalled, healthy = name("stalled"), name("healthy")
    await t.declare_queue(Queue(stalled))
    await t.declare_queue(Queue(healthy))
    vhost = t._address.vhost
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(suspend_queue_process, vhost, stalled)
    try:
        started = loop.time()
        late = asyncio.ensure_future(t.publish(env("late"), routing_key=stalled))
        # Other publishes are confirmed meanwhile; only the late one times out.
        for n in range(3):
            assert await t.publish(env(f"ok {n}"), routing_key=healthy) == 1
        with pytest.raises(TransportError, match="did not confirm a message within 1 s"):
            await late
        assert 0.9 < loop.time() - started < 10
    finally:
        await asyncio.to_thread(suspend_queue_process, vhost, stalled, resume=True)
    assert await t.publish(env("after"), routing_key=stalled) == 1
    assert (await t.queue_stats(stalled)).ready == 2  # the late one arrived after all


async def test_large_bodies_travel_in_several_frames(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    q = name("large")
    await t.declare_queue(Queue(q))
    body = bytes(range(256)) * 4096  # 1 MiB: eight frames at RabbitMQ's 128 KiB frame_max
    await t.publish(Envelope(body=body, content_type="application/octet-stream"), routing_key=q)
    consumer = await t.consume([q])
    (got,) = await take(consumer, 1)
    assert got.envelope.body == body
    await t.ack(got)
    await consumer.cancel()


async def test_an_idle_connection_lives_on_heartbeats(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp(heartbeat=1)
    q = name("idle")
    await t.declare_queue(Queue(q))
    connection = t._session.connection
    await asyncio.sleep(3.5)  # RabbitMQ drops a peer silent for two heartbeat intervals
    assert t._session.connection is connection
    assert await t.publish(env("still here"), routing_key=q) == 1


async def test_deleting_its_queue_ends_a_consumer(
    make_amqp: MakeAMQP, name: Callable[[str], str]
) -> None:
    t = await make_amqp()
    other = await make_amqp()
    q = name("doomed")
    await t.declare_queue(Queue(q))
    consumer = await t.consume([q])
    await other.delete_queue(q)
    assert [d async for d in consumer] == []
