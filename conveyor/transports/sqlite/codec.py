"""How the SQLite broker writes exchanges, queues, bindings and messages into its rows.

Exchanges and queues are kept as JSON definitions beside their names; binding arguments as JSON
with sorted keys (equal arguments must find the same row); envelopes in their wire form. A
stored envelope that no longer decodes is delivered as its raw bytes with the reason in a header,
rather than lost.
"""

from __future__ import annotations

from typing import Any

import orjson

from conveyor.errors import ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, ExchangeType, FrozenMapping, Queue
from conveyor.routing.topology import BoundBinding
from conveyor.transports.storage import StoredMessage
from conveyor.transports.unreadable import unreadable_envelope

__all__ = [
    "decode_envelope",
    "decode_exchange",
    "decode_queue",
    "encode_binding_arguments",
    "encode_exchange",
    "encode_queue",
    "stored_message",
]


def encode_exchange(exchange: Exchange) -> bytes:
    return orjson.dumps(
        {
            "type": exchange.type.value,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "arguments": dict(exchange.arguments),
        }
    )


def decode_exchange(name: str, data: bytes) -> Exchange:
    d = orjson.loads(data)
    return Exchange(
        name,
        ExchangeType(d["type"]),
        durable=d["durable"],
        auto_delete=d["auto_delete"],
        arguments=FrozenMapping(d["arguments"]),
    )


def encode_queue(queue: Queue) -> bytes:
    return orjson.dumps(
        {
            "durable": queue.durable,
            "exclusive": queue.exclusive,
            "auto_delete": queue.auto_delete,
            "arguments": dict(queue.arguments),
        }
    )


def decode_queue(name: str, data: bytes) -> Queue:
    d = orjson.loads(data)
    return Queue(
        name,
        queue_arguments=FrozenMapping(d["arguments"]),
        durable=d["durable"],
        exclusive=d["exclusive"],
        auto_delete=d["auto_delete"],
    )


def encode_binding_arguments(bound: BoundBinding) -> bytes:
    # sorted keys: equal arguments must find the same row when the binding is removed
    return orjson.dumps(dict(bound.arguments), option=orjson.OPT_SORT_KEYS)


def decode_envelope(message_id: int, data: bytes) -> Envelope:
    try:
        return Envelope.from_bytes(data)
    except ProtocolError as exc:
        # Deliver what is there rather than lose it: the consumer sees the raw bytes and why.
        return unreadable_envelope(data, f"stored message {message_id} is unreadable: {exc}")


def stored_message(row: tuple[Any, ...]) -> StoredMessage:
    """A message from a row of ``schema.MESSAGE_COLUMNS``."""
    mid, queue, priority, count, expires_at, exchange, routing_key, data = row
    return StoredMessage(
        tag=mid,
        queue=queue,
        envelope=decode_envelope(mid, data),
        exchange=exchange,
        routing_key=routing_key,
        priority=priority,
        delivery_count=count,
        expires_at=expires_at,
    )
