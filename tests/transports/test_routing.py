"""Routing conformance: each exchange type, the default exchange, alternate exchanges, mandatory."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor import Exchange, ExchangeType, NotFound, Queue, Unroutable, binding
from conveyor.transports import Outgoing

from .conftest import MakeTransport
from .helpers import bodies, copies, drain, env


async def test_direct_exchange_routes_by_exact_key(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("direct"), ExchangeType.DIRECT)
    a, b = names("a"), names("b")
    await t.declare_queue(Queue(a, exchange=ex, routing_key="video"))
    await t.declare_queue(Queue(b, bindings=(binding(ex, "video"), binding(ex, "audio"))))
    assert await t.publish(env("v"), exchange=ex.name, routing_key="video") == copies(t, 2)
    assert await t.publish(env("s"), exchange=ex.name, routing_key="audio") == 1
    assert await t.publish(env("x"), exchange=ex.name, routing_key="video.hd") == 0
    assert bodies(await drain(t, a)) == ["v"]
    assert bodies(await drain(t, b)) == ["v", "s"]


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("feed.*", "feed.import", True),
        ("feed.*", "feed.import.rss", False),
        ("feed.#", "feed.import.rss", True),
        ("feed.#", "feed", True),
        ("*.rss", "import.rss", True),
        ("#", "", True),
        ("*", "", False),
        ("a.*.c", "a..c", True),
    ],
)
async def test_topic_exchange_matches_words(
    make_transport: MakeTransport,
    names: Callable[[str], str],
    pattern: str,
    key: str,
    matches: bool,
) -> None:
    t = await make_transport()
    ex = Exchange(names("topic"), ExchangeType.TOPIC)
    q = names("q")
    await t.declare_queue(Queue(q, exchange=ex, routing_key=pattern))
    assert await t.publish(env("m"), exchange=ex.name, routing_key=key) == int(matches)


async def test_fanout_exchange_ignores_the_key(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("fanout"), ExchangeType.FANOUT)
    queues = [names(f"q{i}") for i in range(3)]
    for q in queues:
        await t.declare_queue(Queue(q, exchange=ex, routing_key="ignored"))
    assert await t.publish(env("all"), exchange=ex.name, routing_key="anything") == copies(t, 3)
    for q in queues:
        assert bodies(await drain(t, q)) == ["all"]


async def test_headers_exchange_all_and_any(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("headers"), ExchangeType.HEADERS)
    all_q, any_q = names("all"), names("any")
    await t.declare_queue(
        Queue(all_q, bindings=(binding(ex, arguments={"x-match": "all", "fmt": "pdf", "size": 1}),))
    )
    await t.declare_queue(
        Queue(any_q, bindings=(binding(ex, arguments={"x-match": "any", "fmt": "pdf", "size": 1}),))
    )
    assert await t.publish(env("bare"), exchange=ex.name) == 0
    both = env("both", headers={"fmt": "pdf", "size": 1})
    assert await t.publish(both, exchange=ex.name) == copies(t, 2)
    assert await t.publish(env("one", headers={"fmt": "pdf", "size": 2}), exchange=ex.name) == 1
    assert await t.publish(env("none", headers={"fmt": "doc"}), exchange=ex.name) == 0
    assert bodies(await drain(t, all_q)) == ["both"]
    assert bodies(await drain(t, any_q)) == ["both", "one"]


async def test_default_exchange_routes_to_the_queue_named_by_the_key(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("plain")
    await t.declare_queue(Queue(q))
    assert await t.publish(env("direct to queue"), routing_key=q) == 1
    assert await t.publish(env("nowhere"), routing_key=names("missing")) == 0
    assert bodies(await drain(t, q)) == ["direct to queue"]


async def test_several_bindings_deliver_one_copy_per_queue(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("topic"), ExchangeType.TOPIC)
    q = names("q")
    await t.declare_queue(Queue(q, bindings=(binding(ex, "a.*"), binding(ex, "*.b"))))
    assert await t.publish(env("ab"), exchange=ex.name, routing_key="a.b") == 1
    assert bodies(await drain(t, q)) == ["ab"]


async def test_alternate_exchange_takes_what_the_exchange_cannot_route(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    alt = Exchange(names("alt"), ExchangeType.FANOUT)
    main = Exchange(names("main"), ExchangeType.DIRECT, arguments={"alternate-exchange": alt.name})
    routed, unrouted = names("routed"), names("unrouted")
    await t.declare_exchange(alt)
    await t.declare_queue(Queue(routed, exchange=main, routing_key="known"))
    await t.declare_queue(Queue(unrouted, exchange=alt))
    assert await t.publish(env("k"), exchange=main.name, routing_key="known") == 1
    assert await t.publish(env("u"), exchange=main.name, routing_key="other", mandatory=True) == 1
    assert bodies(await drain(t, routed)) == ["k"]
    assert bodies(await drain(t, unrouted)) == ["u"]


async def test_mandatory_unroutable_raises_and_plain_is_dropped(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    ex = Exchange(names("direct"), ExchangeType.DIRECT)
    q = names("q")
    await t.declare_queue(Queue(q, exchange=ex, routing_key="yes"))
    with pytest.raises(Unroutable) as info:
        await t.publish(env("m"), exchange=ex.name, routing_key="no", mandatory=True)
    assert info.value.routing_key == "no"
    assert await t.publish(env("m"), exchange=ex.name, routing_key="no") == 0
    assert (await t.queue_stats(q)).ready == 0


async def test_publishing_to_a_missing_exchange_is_not_found(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    with pytest.raises(NotFound):
        await t.publish(env("m"), exchange=names("nope"), routing_key="k")


async def test_publish_many_returns_counts_in_order(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    t = await make_transport()
    q = names("q")
    await t.declare_queue(Queue(q))
    counts = await t.publish_many(
        [Outgoing(env(str(i)), routing_key=q if i % 2 == 0 else names("none")) for i in range(6)]
    )
    assert counts == [1, 0, 1, 0, 1, 0]
    assert bodies(await drain(t, q)) == ["0", "2", "4"]


async def test_a_second_connection_sees_declarations_and_messages(
    make_transport: MakeTransport, names: Callable[[str], str]
) -> None:
    producer = await make_transport()
    worker = await make_transport()
    ex = Exchange(names("topic"), ExchangeType.TOPIC)
    q = names("q")
    assert await producer.publish(env("early"), routing_key=q) == 0
    await worker.declare_queue(Queue(q, exchange=ex, routing_key="jobs.#"))
    assert await producer.publish(env("late"), exchange=ex.name, routing_key="jobs.x") == 1
    assert bodies(await drain(worker, q)) == ["late"]
