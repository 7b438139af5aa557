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

__all__ = ["destinations", "headers_match", "topic_matches"]

_MAX_ALTERNATE_HOPS = 16


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


def _same_value(expected: Any, actual: Any) -> bool:
    # AMQP field tables are typed: 1, 1.0 and True are three different values.
    if expected is None:
        return True  # a void binding value matches on the key's presence alone
    if type(expected) is not type(actual):
        return False
    return bool(expected == actual)


def headers_match(binding_arguments: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    """True if a headers-exchange binding with ``binding_arguments`` takes these ``headers``.

    ``x-match`` is ``all`` (the default), ``any``, ``all-with-x`` or ``any-with-x``. Keys starting
    with ``x-`` are ignored except in the ``-with-x`` modes. Values compare by type and value; a
    ``None`` binding value matches any value of that key. ``all`` with no other keys matches every
    message; ``any`` with no other keys matches none.
    """
    mode = binding_arguments.get("x-match", "all")
    with_x = mode in ("all-with-x", "any-with-x")
    match_all = mode in ("all", "all-with-x")
    wanted = [
        (key, value)
        for key, value in binding_arguments.items()
        if key != "x-match" and (with_x or not key.startswith("x-"))
    ]
    if match_all:
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


def destinations(
    topology: Topology,
    exchange: str,
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
) -> frozenset[str]:
    """The names of the queues a message published to ``exchange`` with ``routing_key`` reaches.

    The default exchange ``""`` routes to the queue named by the routing key, if it exists. An
    exchange that routes nowhere hands the message to its ``alternate-exchange`` (followed in
    turn; a cycle ends the walk). Bindings to queues that are not declared are ignored.

    Raises NotFound if ``exchange`` is not declared, as RabbitMQ refuses such a publish.
    """
    if not topology.has_exchange(exchange):
        raise NotFound(
            f"exchange {exchange!r} does not exist: declare it (or a queue bound to it) "
            "before publishing to it"
        )
    hdrs: Mapping[str, Any] = headers or {}
    seen: set[str] = set()
    current: str | None = exchange
    hops = 0
    while current is not None and current not in seen and hops < _MAX_ALTERNATE_HOPS:
        seen.add(current)
        hops += 1
        if current == DEFAULT_EXCHANGE:
            return frozenset({routing_key}) if routing_key in topology.queues else frozenset()
        declared = topology.exchanges.get(current)
        if declared is None:
            return frozenset()
        found = frozenset(
            b.queue
            for b in topology.bindings_of(current)
            if b.queue in topology.queues and _binding_takes(declared.type, b, routing_key, hdrs)
        )
        if found:
            return found
        current = declared.alternate_exchange
    return frozenset()
