"""Entity definitions fail where they are written, with a message that says what to fix."""

from __future__ import annotations

import dataclasses

import pytest

from conveyor import Binding, Broadcast, Exchange, ExchangeType, Queue, TopologyError, binding
from conveyor.routing.entities import FrozenMapping


def test_unknown_exchange_type_names_the_valid_ones() -> None:
    with pytest.raises(TopologyError, match=r"unknown exchange type 'topc'.*'topic'"):
        Exchange("e", "topc")  # type: ignore[arg-type]
    assert Exchange("e", "topic").type is ExchangeType.TOPIC  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda key: Queue("q", Exchange("e"), routing_key=key),
        lambda key: binding("e", key),
        lambda key: Binding(Exchange("e"), key),
    ],
)
def test_routing_key_over_255_bytes_is_refused(make: object) -> None:
    assert callable(make)
    make("k" * 255)
    with pytest.raises(TopologyError, match="256 bytes"):
        make("k" * 256)
    # The limit is in bytes, not characters: 128 two-byte characters are 256 bytes.
    with pytest.raises(TopologyError, match="256 bytes"):
        make("é" * 128)


def test_names_over_255_bytes_are_refused() -> None:
    with pytest.raises(TopologyError, match="queue name is 256 bytes"):
        Queue("q" * 256)
    with pytest.raises(TopologyError, match="exchange name is 256 bytes"):
        Exchange("e" * 256)


@pytest.mark.parametrize("priority", [-1, 256, 1000])
def test_priority_outside_0_to_255_is_refused(priority: int) -> None:
    with pytest.raises(TopologyError, match=r"0\.\.255"):
        Queue("q", max_priority=priority)
    with pytest.raises(TopologyError, match=r"0\.\.255"):
        Queue("q", queue_arguments={"x-max-priority": priority})
    with pytest.raises(TopologyError, match=r"0\.\.255"):
        Broadcast("b", queue_arguments={"x-max-priority": priority})


def test_priority_must_be_an_integer() -> None:
    with pytest.raises(TopologyError, match="integer"):
        Queue("q", max_priority=True)
    with pytest.raises(TopologyError, match="integer"):
        Queue("q", queue_arguments={"x-max-priority": "10"})


def test_queue_options_become_rabbitmq_arguments() -> None:
    q = Queue("q", max_priority=10, message_ttl=1.5, expires=60, max_length=100)
    assert q.arguments == {
        "x-max-priority": 10,
        "x-message-ttl": 1500,
        "x-expires": 60000,
        "x-max-length": 100,
    }
    assert q.priority_levels == 10
    with pytest.raises(TopologyError, match="expires"):
        Queue("q", expires=0)
    with pytest.raises(TopologyError, match="message_ttl"):
        Queue("q", message_ttl=-1)
    with pytest.raises(TopologyError, match="max_length"):
        Queue("q", max_length=-1)


def test_queue_with_a_list_of_bindings_as_kombu_writes_it() -> None:
    media = Exchange("media", type=ExchangeType.DIRECT)
    q = Queue(
        "media",
        [binding(media, routing_key="media.video"), binding(media, routing_key="media.image")],
    )
    assert q.exchange is None
    assert [b.routing_key for b in q.all_bindings] == ["media.video", "media.image"]
    assert q == Queue("media", bindings=q.bindings)
    assert dataclasses.replace(q, durable=False).bindings == q.bindings
    with pytest.raises(TopologyError, match=r"binding\(\.\.\.\)"):
        Queue("q", bindings=[("media", "key")])  # type: ignore[list-item]


def test_single_binding_comes_first_and_defaults_to_the_queue_name() -> None:
    q = Queue("q", Exchange("e"), bindings=[binding("other", "k")])
    assert [(b.exchange_name, b.routing_key) for b in q.all_bindings] == [
        ("e", "q"),
        ("other", "k"),
    ]


def test_headers_binding_needs_a_valid_x_match() -> None:
    headers = Exchange("h", ExchangeType.HEADERS)
    binding(headers, arguments={"x-match": "any-with-x", "a": 1})
    with pytest.raises(TopologyError, match="x-match"):
        binding(headers, arguments={"x-match": "some"})
    # A name cannot be checked until the exchange is known; the router checks it then.
    binding("h", arguments={"x-match": "some"})


def test_entities_are_frozen_and_hashable() -> None:
    q = Queue("q", Exchange("e", arguments={"alternate-exchange": "ae"}), "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.name = "other"  # type: ignore[misc]
    assert hash(q) == hash(Queue("q", Exchange("e", arguments={"alternate-exchange": "ae"}), "k"))
    assert isinstance(q.exchange, Exchange)
    assert q.exchange.alternate_exchange == "ae"
    assert FrozenMapping({"a": 1}) == {"a": 1}
    assert hash(FrozenMapping({"a": 1, "b": 2})) == hash(FrozenMapping({"b": 2, "a": 1}))


def test_broadcast_is_a_fanout_exchange_with_a_queue_per_worker() -> None:
    b = Broadcast("broadcast_tasks")
    assert b.exchange == Exchange("broadcast_tasks", ExchangeType.FANOUT)
    q = b.queue_for("w1@host")
    assert q.exclusive
    assert q.auto_delete
    assert not q.durable
    assert [(x.exchange_name, x.routing_key) for x in q.all_bindings] == [("broadcast_tasks", "")]
    with pytest.raises(TopologyError, match="needs a name"):
        Broadcast("")
