"""RabbitMQ's matching rules as pure functions, and the one call that routes over a Topology.

Every transport without native exchanges routes through :func:`destinations`, so the rules live
here once. RabbitMQ is the reference: where it and a reading of the AMQP spec differ, RabbitMQ wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from conveyor.errors import NotFound
from conveyor.routing.entities import DEFAULT_EXCHANGE, ExchangeType
from conveyor.routing.topology import BoundBinding, Topology

__all__ = ["destinations", "headers_match", "route_through", "topic_matches"]


def _words(key: str) -> tuple[str, ...]:
    # RabbitMQ treats the empty key as zero words; otherwise every '.' separates a word,
    # so "a..b" has three words and "a." has two.
    return tuple(key.split(".")) if key else ()


@lru_cache(maxsize=4096)
def topic_matches(binding_key: str, routing_key: str) -> bool:
    """True if a topic binding with ``binding_key`` takes a message with ``routing_key``.

    Words are split on ``.``; ``*`` matches exactly one word, ``#`` zero or more words; empty
    words are words. The empty key has no words, so ``#`` matches it and ``*`` does not.
    """
    pattern = _words(binding_key)
    words = _words(routing_key)
    m = len(words)
    # reachable[j]: the pattern prefix seen so far can consume exactly the first j words.
    reachable = [False] * (m + 1)
    reachable[0] = True
    for token in pattern:
        if token == "#":
            seen = False
            for j in range(m + 1):
                seen = seen or reachable[j]
                reachable[j] = seen
        else:
            for j in range(m, 0, -1):
                reachable[j] = reachable[j - 1] and (token == "*" or token == words[j - 1])
            reachable[0] = False
        if not any(reachable):
            return False
    return reachable[m]


_MISSING = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_nested(expected: Any, actual: Any) -> bool:
    # Inside arrays and tables RabbitMQ compares (type, value) pairs, so 1 and 1.0 differ there.
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        return expected.keys() == actual.keys() and all(
            _same_nested(expected[k], actual[k]) for k in expected
        )
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(expected) == len(actual) and all(
            _same_nested(e, a) for e, a in zip(expected, actual, strict=True)
        )
    return type(expected) is type(actual) and bool(expected == actual)


def _same_value(expected: Any, actual: Any) -> bool:
    # RabbitMQ compares top-level values with Erlang's ==: numbers by value whatever their
    # width or kind (1 matches 1.0), booleans only booleans, strings only strings.
    if expected is None:
        return True  # a void binding value matches on the key's presence alone
    if _is_number(expected) or _is_number(actual):
        return _is_number(expected) and _is_number(actual) and bool(expected == actual)
    return _same_nested(expected, actual)


def headers_match(binding_arguments: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    """True if a headers-exchange binding with ``binding_arguments`` takes these ``headers``.

    ``x-match`` is ``all`` (the default), ``any``, ``all-with-x`` or ``any-with-x``; any other
    value counts as ``all``, as in RabbitMQ (which refuses such a binding in the first place:
    see :func:`conveyor.routing.entities.check_binding_arguments`). Keys starting with ``x-`` are
    ignored except in the ``-with-x`` modes. Values compare as RabbitMQ compares them: numbers by
    value (``1`` matches ``1.0``), booleans and strings only their own kind, arrays and tables
    element by element with their types; a ``None`` binding value matches any value of that key.
    ``all`` with no other keys matches every message; ``any`` with no other keys matches none.
    """
    mode = binding_arguments.get("x-match", "all")
    with_x = mode in ("all-with-x", "any-with-x")
    match_any = mode in ("any", "any-with-x")
    wanted = [
        (key, value)
        for key, value in binding_arguments.items()
        if key != "x-match" and (with_x or not key.startswith("x-"))
    ]
    if not match_any:
        for key, value in wanted:
            actual = headers.get(key, _MISSING)
            if actual is _MISSING or not _same_value(value, actual):
                return False
        return True
    for key, value in wanted:
        actual = headers.get(key, _MISSING)
        if actual is not _MISSING and _same_value(value, actual):
            return True
    return False


def _binding_takes(
    kind: ExchangeType, bound: BoundBinding, routing_key: str, headers: Mapping[str, Any]
) -> bool:
    if kind is ExchangeType.DIRECT:
        return bound.routing_key == routing_key
    if kind is ExchangeType.TOPIC:
        return topic_matches(bound.routing_key, routing_key)
    if kind is ExchangeType.FANOUT:
        return True
    return headers_match(bound.arguments, headers)


def route_through(
    topology: Topology,
    exchange: str,
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
) -> tuple[frozenset[str], tuple[str, ...]]:
    """Like :func:`destinations`, also returning the exchanges tried in order.

    The second item starts with ``exchange`` and lists each alternate exchange the message was
    handed to; ``routes explain`` shows it. Raises NotFound if ``exchange`` is not declared.
    """
    if not topology.has_exchange(exchange):
        raise NotFound(
            f"exchange {exchange!r} does not exist: declare it (or a queue bound to it) "
            "before publishing to it"
        )
    hdrs: Mapping[str, Any] = headers or {}
    tried: list[str] = []
    current: str | None = exchange
    while current is not None and current not in tried:
        tried.append(current)
        if current == DEFAULT_EXCHANGE:
            found = frozenset({routing_key}) if routing_key in topology.queues else frozenset()
            return found, tuple(tried)
        declared = topology.exchanges.get(current)
        if declared is None:
            # An alternate exchange that does not exist drops the message, as in RabbitMQ.
            break
        found = frozenset(
            b.queue
            for b in topology.bindings_of(current)
            if b.queue in topology.queues and _binding_takes(declared.type, b, routing_key, hdrs)
        )
        if found:
            return found, tuple(tried)
        current = declared.alternate_exchange
    return frozenset(), tuple(tried)


def destinations(
    topology: Topology,
    exchange: str,
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
) -> frozenset[str]:
    """The names of the queues a message published to ``exchange`` with ``routing_key`` reaches.

    The default exchange ``""`` routes to the queue named by the routing key, if it exists. An
    exchange that routes nowhere hands the message to its ``alternate-exchange`` (followed in
    turn; a cycle, or an alternate exchange that does not exist, ends the walk with no queue).
    Bindings to queues that are not declared are ignored.

    Raises NotFound if ``exchange`` is not declared, as RabbitMQ refuses such a publish.
    """
    return route_through(topology, exchange, routing_key, headers)[0]
