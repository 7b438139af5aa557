"""The edge-case tables in cases.py, replayed on a real RabbitMQ: the reference the matchers follow.

Each case gets its own exchange and exclusive queue bound with the case's key (or arguments); one
message is published and the queue's message count says whether the broker routed it.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiormq
import pytest
from pamqp.commands import Basic

from tests.routing.cases import HEADERS_CASES, TOPIC_CASES


async def _replay(
    url: str,
    exchange_type: str,
    cases: list[tuple[str, dict[str, Any], str, dict[str, Any]]],
) -> list[bool]:
    """For each (binding key, binding args, routing key, headers): did the message arrive?"""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        prefix = f"conveyor-test-{exchange_type}-{uuid.uuid4().hex}"
        queues = []
        for binding_key, arguments, routing_key, headers in cases:
            exchange = queue = f"{prefix}-{len(queues)}"
            await channel.exchange_declare(exchange, exchange_type=exchange_type, auto_delete=True)
            await channel.queue_declare(queue, exclusive=True)
            await channel.queue_bind(queue, exchange, routing_key=binding_key, arguments=arguments)
            await channel.basic_publish(
                b"probe",
                exchange=exchange,
                routing_key=routing_key,
                properties=Basic.Properties(headers=headers),
            )
            queues.append(queue)
        arrived = []
        for queue in queues:
            ok = await channel.queue_declare(queue, passive=True)
            arrived.append(ok.message_count == 1)
            await channel.exchange_delete(queue)
        return arrived
    finally:
        await connection.close()


async def test_topic_cases_match_rabbitmq(rabbitmq_url: str) -> None:
    cases = [(b, {}, r, {}) for b, r, _ in TOPIC_CASES]
    arrived = await _replay(rabbitmq_url, "topic", cases)
    disagreements = [
        case for case, got in zip(TOPIC_CASES, arrived, strict=True) if got is not case[2]
    ]
    assert disagreements == []


async def test_headers_cases_match_rabbitmq(rabbitmq_url: str) -> None:
    cases = [("", a, "", h) for a, h, _ in HEADERS_CASES]
    arrived = await _replay(rabbitmq_url, "headers", cases)
    disagreements = [
        case for case, got in zip(HEADERS_CASES, arrived, strict=True) if got is not case[2]
    ]
    assert disagreements == []


@pytest.mark.parametrize("mode", ["bogus", 1])
async def test_rabbitmq_refuses_an_invalid_x_match_as_conveyor_does(
    rabbitmq_url: str, mode: object
) -> None:
    from conveyor.errors import TopologyError
    from conveyor.routing.entities import ExchangeType, check_binding_arguments

    with pytest.raises(TopologyError, match="x-match"):
        check_binding_arguments(ExchangeType.HEADERS, {"x-match": mode})
    connection = await aiormq.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        exchange = f"conveyor-test-xmatch-{uuid.uuid4().hex}"
        await channel.exchange_declare(exchange, exchange_type="headers", auto_delete=True)
        await channel.queue_declare(f"{exchange}-q", exclusive=True)
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.queue_bind(f"{exchange}-q", exchange, arguments={"x-match": mode})
        channel = await connection.channel()
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()
