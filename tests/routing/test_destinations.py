"""destinations(): which declared queues a publish reaches, over whole topologies."""

from __future__ import annotations

import pytest

from conveyor.errors import NotFound, TopologyError
from conveyor.routing.entities import Exchange, ExchangeType, Queue
from conveyor.routing.matching import destinations, route_through
from conveyor.routing.topology import BoundBinding, Topology


def _topology(
    exchanges: list[Exchange], bindings: list[tuple[str, str, str]], queues: list[str]
) -> Topology:
    return Topology.build(
        exchanges=exchanges,
        queues=[Queue(q) for q in queues],
        bindings=[BoundBinding(e, q, k) for e, q, k in bindings],
    )


MEDIA = _topology(
    [
        Exchange("media", ExchangeType.DIRECT),
        Exchange("news", ExchangeType.TOPIC),
        Exchange("all", ExchangeType.FANOUT),
    ],
    [
        ("media", "videos", "media.video"),
        ("media", "images", "media.image"),
        ("media", "archive", "media.video"),
        ("news", "usa", "usa.#"),
        ("news", "weather", "*.weather"),
        ("all", "videos", "ignored"),
        ("all", "images", ""),
    ],
    ["videos", "images", "archive", "usa", "weather"],
)


@pytest.mark.parametrize(
    ("exchange", "key", "expected"),
    [
        ("media", "media.video", {"videos", "archive"}),
        ("media", "media.image", {"images"}),
        ("media", "media.audio", set()),
        ("media", "media.*", set()),
        ("news", "usa.weather", {"usa", "weather"}),
        ("news", "usa", {"usa"}),
        ("news", "norway.weather", {"weather"}),
        ("news", "norway.news", set()),
        ("all", "anything", {"videos", "images"}),
        ("all", "", {"videos", "images"}),
        ("", "videos", {"videos"}),
        ("", "nope", set()),
        ("", "", set()),
    ],
)
def test_exchange_types(exchange: str, key: str, expected: set[str]) -> None:
    assert destinations(MEDIA, exchange, key) == expected


def test_headers_exchange_ignores_the_routing_key() -> None:
    topo = Topology.build(
        exchanges=[Exchange("h", ExchangeType.HEADERS)],
        queues=[Queue("pdf"), Queue("any-report"), Queue("everything")],
        bindings=[
            BoundBinding("h", "pdf", "", {"format": "pdf", "type": "report"}),
            BoundBinding("h", "any-report", "", {"x-match": "any", "type": "report", "n": 1}),
            BoundBinding("h", "everything", "whatever"),
        ],
    )
    assert destinations(topo, "h", "key", {"format": "pdf", "type": "report"}) == {
        "pdf",
        "any-report",
        "everything",
    }
    assert destinations(topo, "h", "", {"n": 1.0}) == {"any-report", "everything"}
    assert destinations(topo, "h", "") == {"everything"}


def test_a_queue_bound_twice_is_reached_once_and_by_either_key() -> None:
    topo = _topology(
        [Exchange("media")],
        [("media", "media", "media.video"), ("media", "media", "media.image")],
        ["media"],
    )
    assert destinations(topo, "media", "media.video") == {"media"}
    assert destinations(topo, "media", "media.image") == {"media"}
    assert destinations(topo, "media", "media.audio") == frozenset()


def test_bindings_to_queues_that_are_not_declared_are_ignored() -> None:
    topo = _topology([Exchange("e")], [("e", "gone", "k"), ("e", "here", "k")], ["here"])
    assert destinations(topo, "e", "k") == {"here"}


def test_unknown_exchange_raises_not_found() -> None:
    with pytest.raises(NotFound, match="'nope' does not exist"):
        destinations(MEDIA, "nope", "k")


def test_alternate_exchange_takes_what_the_exchange_cannot_route() -> None:
    topo = _topology(
        [
            Exchange("main", arguments={"alternate-exchange": "spill"}),
            Exchange("spill", ExchangeType.FANOUT),
        ],
        [("main", "work", "work"), ("spill", "unrouted", "")],
        ["work", "unrouted"],
    )
    assert destinations(topo, "main", "work") == {"work"}
    assert destinations(topo, "main", "other") == {"unrouted"}
    assert route_through(topo, "main", "other") == (frozenset({"unrouted"}), ("main", "spill"))


def test_alternate_exchanges_chain_and_a_cycle_ends_with_no_queue() -> None:
    chain = [Exchange(f"e{i}", arguments={"alternate-exchange": f"e{i + 1}"}) for i in range(20)]
    topo = _topology(
        [*chain, Exchange("e20", ExchangeType.FANOUT)], [("e20", "last", "")], ["last"]
    )
    assert destinations(topo, "e0", "k") == {"last"}

    cycle = _topology(
        [
            Exchange("a", arguments={"alternate-exchange": "b"}),
            Exchange("b", arguments={"alternate-exchange": "a"}),
        ],
        [("a", "qa", "only-a"), ("b", "qb", "only-b")],
        ["qa", "qb"],
    )
    assert destinations(cycle, "a", "only-b") == {"qb"}
    assert destinations(cycle, "b", "only-a") == {"qa"}
    assert route_through(cycle, "a", "none") == (frozenset(), ("a", "b"))


def test_alternate_exchange_that_does_not_exist_drops_the_message() -> None:
    topo = _topology([Exchange("main", arguments={"alternate-exchange": "missing"})], [], [])
    assert route_through(topo, "main", "k") == (frozenset(), ("main", "missing"))


def test_topology_is_immutable_and_binding_twice_is_a_no_op() -> None:
    topo = Topology()
    bound = BoundBinding("e", "q", "k")
    grown = topo.with_exchange(Exchange("e")).with_queue(Queue("q")).with_binding(bound)
    assert topo.bindings == ()
    assert not topo.exchanges
    assert grown.with_binding(bound) is grown
    assert destinations(grown, "e", "k") == {"q"}


def test_topology_refuses_a_headers_binding_with_an_invalid_x_match() -> None:
    topo = Topology().with_exchange(Exchange("h", "headers"))
    with pytest.raises(TopologyError, match="x-match"):
        topo.with_binding(BoundBinding("h", "q", "", {"x-match": "most"}))
    with pytest.raises(TopologyError, match="x-match"):
        Topology.build([Exchange("h", "headers")], [], [BoundBinding("h", "q", "", {"x-match": 1})])
    # Only headers exchanges read x-match, as in RabbitMQ.
    Topology().with_exchange(Exchange("d")).with_binding(BoundBinding("d", "q", "", {"x-match": 1}))
