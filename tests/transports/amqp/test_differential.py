"""Differential test: conveyor's routing (memory://) against RabbitMQ's on random topologies.

Each case draws exchanges of all four types (some with alternate exchanges, cycles and dangling
ones included), queues with several bindings each (topic keys with ``*``, ``#`` and empty words;
headers bindings in all four ``x-match`` modes with typed values), declares the same topology on
memory:// and on RabbitMQ, sends the same random publishes to both, and compares, message by
message, the set of queues that received it. RabbitMQ is the reference.

``CONVEYOR_DIFF_CASES`` sets how many cases run (default 60, a few seconds); the seeds are fixed
so a failure names the seed that reproduces it.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from conveyor import Envelope, Exchange, ExchangeType, Queue, binding
from conveyor.routing.entities import Binding
from conveyor.transports import Transport, open_transport
from conveyor.transports.amqp import AMQPTransport

CASES = int(os.environ.get("CONVEYOR_DIFF_CASES", "60"))
PUBLISHES = 30

WORDS = ["a", "b", "c", ""]
HEADER_KEYS = ["k1", "k2", "x-k"]
HEADER_VALUES: list[Any] = [1, 2, 1.0, 2.5, "1", "v", True, False, [1, "a"], {"n": 1}]


@dataclass
class Case:
    """One random topology and the messages sent through it."""

    seed: int
    exchanges: list[Exchange] = field(default_factory=list)
    queues: list[Queue] = field(default_factory=list)
    publishes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"seed {self.seed}:"]
        for ex in self.exchanges:
            ae = ex.alternate_exchange
            lines.append(f"  exchange {ex.name} {ex.type.value}" + (f" ae={ae}" if ae else ""))
        for q in self.queues:
            for b in q.bindings:
                args = dict(b.arguments)
                lines.append(f"  queue {q.name} <- {b.exchange_name} {b.routing_key!r} {args}")
        return "\n".join(lines)


def _key(rng: random.Random, tokens: list[str], longest: int) -> str:
    return ".".join(rng.choice(tokens) for _ in range(rng.randint(0, longest)))


def _headers(rng: random.Random, *, binding_side: bool) -> dict[str, Any]:
    chosen = rng.sample(HEADER_KEYS, rng.randint(0, len(HEADER_KEYS)))
    values = [*HEADER_VALUES, None] if binding_side else HEADER_VALUES
    return {key: rng.choice(values) for key in chosen}


def make_case(seed: int, prefix: str) -> Case:
    rng = random.Random(seed)
    case = Case(seed)
    names = [f"{prefix}.ex{i}" for i in range(rng.randint(2, 5))]
    for name in names:
        kind = rng.choice(list(ExchangeType))
        arguments: dict[str, Any] = {}
        if rng.random() < 0.4:
            # Another exchange of the case, itself (a cycle), or one that does not exist.
            arguments["alternate-exchange"] = rng.choice([*names, f"{prefix}.missing"])
        case.exchanges.append(Exchange(name, kind, durable=False, arguments=arguments))
    for i in range(rng.randint(2, 6)):
        bindings: list[Binding] = []
        for _ in range(rng.randint(1, 4)):
            ex = rng.choice(case.exchanges)
            if ex.type is ExchangeType.HEADERS:
                args = _headers(rng, binding_side=True)
                args["x-match"] = rng.choice(["all", "any", "all-with-x", "any-with-x"])
                bindings.append(binding(ex.name, "", args))
            elif ex.type is ExchangeType.TOPIC:
                bindings.append(binding(ex.name, _key(rng, [*WORDS, "*", "#"], 4)))
            else:
                bindings.append(binding(ex.name, _key(rng, WORDS, 2)))
        case.queues.append(
            Queue(f"{prefix}.q{i}", bindings=tuple(bindings), durable=False, exclusive=True)
        )
    targets = [*names, ""]
    for _ in range(PUBLISHES):
        exchange = rng.choice(targets)
        if exchange == "":
            key = rng.choice([q.name for q in case.queues] + [f"{prefix}.nowhere"])
        else:
            key = _key(rng, WORDS, 4)
        case.publishes.append((exchange, key, _headers(rng, binding_side=False)))
    return case


async def run_case(transport: Transport, case: Case) -> tuple[list[int], dict[str, set[str]]]:
    """Declare, publish, drain: each publish's result and the queues each message reached."""
    for ex in case.exchanges:
        await transport.declare_exchange(ex)
    for q in case.queues:
        await transport.declare_queue(q)
    results = []
    for number, (exchange, key, headers) in enumerate(case.publishes):
        envelope = Envelope(body=str(number).encode(), headers=headers)
        results.append(await transport.publish(envelope, exchange=exchange, routing_key=key))
    reached: dict[str, set[str]] = {str(n): set() for n in range(len(case.publishes))}
    for q in case.queues:
        while (delivery := await transport.get(q.name, no_ack=True)) is not None:
            reached[delivery.envelope.body.decode()].add(q.name)
    for q in case.queues:
        await transport.delete_queue(q.name)
    for ex in case.exchanges:
        await transport.delete_exchange(ex.name)
    return results, reached


@pytest.fixture
async def brokers(rabbitmq_url: str) -> AsyncIterator[tuple[Transport, Transport]]:
    memory = open_transport(f"memory://differential-{uuid.uuid4().hex}")
    rabbit = AMQPTransport.from_url(rabbitmq_url)
    await memory.connect()
    await rabbit.connect()
    yield memory, rabbit
    await rabbit.close()
    await memory.close()


async def test_conveyor_routes_every_message_where_rabbitmq_does(
    brokers: tuple[Transport, Transport],
) -> None:
    memory, rabbit = brokers
    run = uuid.uuid4().hex[:8]
    messages = 0
    for seed in range(CASES):
        case = make_case(seed, f"diff.{run}.{seed}")
        mem_results, mem_reached = await run_case(memory, case)
        amqp_results, amqp_reached = await run_case(rabbit, case)
        for number, (exchange, key, headers) in enumerate(case.publishes):
            n = str(number)
            assert mem_reached[n] == amqp_reached[n], (
                f"message {number} to {exchange!r} key {key!r} headers {headers}: conveyor "
                f"routed it to {sorted(mem_reached[n])}, RabbitMQ to {sorted(amqp_reached[n])}\n"
                + case.describe()
            )
            assert len(mem_reached[n]) == mem_results[number]
            assert amqp_results[number] == min(mem_results[number], 1)
        messages += len(case.publishes)
    assert messages == CASES * PUBLISHES
