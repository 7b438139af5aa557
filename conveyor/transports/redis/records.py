"""How the Redis storage writes records and messages: JSON records, packed message blobs.

Exchanges and queues are JSON records in the topology hashes, a binding is the JSON list of its
fields (the field of the bindings hash). A message is one blob, as the ``enqueue`` script takes
it and the queue's body hash keeps it: a header, the routing fields as JSON, then the envelope.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from conveyor.errors import ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Binding, Exchange, FrozenMapping, Queue
from conveyor.routing.topology import BoundBinding
from conveyor.transports.base import DeliveryTag
from conveyor.transports.storage import NewMessage, StoredMessage
from conveyor.transports.unreadable import unreadable_envelope

__all__ = [
    "binding_field",
    "binding_from",
    "dumps",
    "exchange_from",
    "exchange_record",
    "pack",
    "queue_from",
    "queue_record",
    "redis_tags",
    "stored_messages",
]

_META_SIZE = struct.Struct("!I")


def _plain(value: Any) -> Any:
    if isinstance(value, FrozenMapping):
        return value.to_dict()
    raise TypeError(f"cannot store {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_plain, option=orjson.OPT_SORT_KEYS)


def exchange_record(exchange: Exchange) -> dict[str, Any]:
    return {
        "name": exchange.name,
        "type": exchange.type.value,
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "arguments": exchange.arguments,
    }


def exchange_from(record: Mapping[str, Any]) -> Exchange:
    return Exchange(
        record["name"],
        record["type"],
        durable=record["durable"],
        auto_delete=record["auto_delete"],
        arguments=record["arguments"],
    )


def _binding_target(exchange: Exchange | str | None) -> Any:
    return exchange_record(exchange) if isinstance(exchange, Exchange) else exchange


def _binding_exchange(value: Any) -> Exchange | str | None:
    return exchange_from(value) if isinstance(value, dict) else value


def queue_record(queue: Queue, owner: str | None) -> dict[str, Any]:
    return {
        "name": queue.name,
        "exchange": _binding_target(queue.exchange),
        "routing_key": queue.routing_key,
        "bindings": [
            {
                "exchange": _binding_target(b.exchange),
                "routing_key": b.routing_key,
                "arguments": b.arguments,
            }
            for b in queue.bindings
        ],
        "arguments": queue.arguments,
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete,
        "owner": owner,
    }


def queue_from(record: Mapping[str, Any]) -> tuple[Queue, str | None]:
    queue = Queue(
        record["name"],
        exchange=_binding_exchange(record["exchange"]),
        routing_key=record["routing_key"],
        bindings=tuple(
            Binding(_binding_exchange(b["exchange"]) or "", b["routing_key"], b["arguments"])
            for b in record["bindings"]
        ),
        queue_arguments=record["arguments"],
        durable=record["durable"],
        exclusive=record["exclusive"],
        auto_delete=record["auto_delete"],
    )
    return queue, record["owner"]


def binding_field(bound: BoundBinding) -> bytes:
    return dumps([bound.exchange, bound.queue, bound.routing_key, bound.arguments])


def binding_from(field: bytes) -> BoundBinding:
    exchange, queue, routing_key, arguments = orjson.loads(field)
    return BoundBinding(exchange, queue, routing_key, arguments)


def pack(message: NewMessage, ident: str) -> bytes:
    """One message as the ENQUEUE script takes it and the body hash keeps it: a header
    (``id, priority, not_before, expires_at, queue length`` and the queue, newline separated),
    the routing fields as JSON, then the envelope."""
    queue = message.queue.encode()
    head = b"%s\n%d\n%s\n%s\n%d\n" % (
        ident.encode(),
        message.priority,
        b"" if message.not_before is None else repr(message.not_before).encode(),
        b"" if message.expires_at is None else repr(message.expires_at).encode(),
        len(queue),
    )
    meta = orjson.dumps(
        [message.exchange, message.routing_key, message.priority, message.expires_at]
    )
    return b"".join((head, queue, _META_SIZE.pack(len(meta)), meta, message.envelope.to_bytes()))


def _unpack(queue: bytes, ident: bytes, count: Any, blob: bytes | None) -> StoredMessage:
    """The stored message of one ``dequeue`` reply entry. Never raises on what Redis holds: a
    blob that is not conveyor's (or gone) comes as an unreadable envelope saying why, for the
    worker to dead-letter (see :mod:`conveyor.transports.unreadable`)."""
    name = queue.decode("utf-8", errors="replace")
    tag = f"{ident.decode('utf-8', errors='replace')}:{name}"
    delivery_count = int(count)
    if blob is None:
        reason = f"message {tag} lost its body in Redis (was the key evicted?)"
        return _unreadable(tag, name, delivery_count, b"", reason)
    try:
        pos = 0
        for _ in range(4):
            pos = blob.index(b"\n", pos) + 1
        end = blob.index(b"\n", pos)
        start = end + 1 + int(blob[pos:end])
        (size,) = _META_SIZE.unpack_from(blob, start)
        start += _META_SIZE.size
        exchange, routing_key, priority, expires_at = orjson.loads(blob[start : start + size])
        if not (isinstance(exchange, str) and isinstance(routing_key, str)):
            raise ValueError("its exchange or routing key is not a string")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"its priority is {priority!r}")
        if expires_at is not None and not isinstance(expires_at, (int, float)):
            raise ValueError(f"its expiry is {expires_at!r}")
    except (struct.error, orjson.JSONDecodeError, ValueError, TypeError) as exc:
        reason = f"message {tag} in Redis is not conveyor's: {exc}"
        return _unreadable(tag, name, delivery_count, blob, reason)
    envelope_bytes = blob[start + size :]
    try:
        envelope = Envelope.from_bytes(envelope_bytes)
    except ProtocolError as exc:
        reason = f"message {tag} in Redis is unreadable: {exc}"
        envelope = unreadable_envelope(envelope_bytes, reason)
    return StoredMessage(
        tag=tag,
        queue=name,
        envelope=envelope,
        exchange=exchange,
        routing_key=routing_key,
        priority=priority,
        delivery_count=delivery_count,
        expires_at=expires_at,
    )


def _unreadable(tag: str, queue: str, count: int, blob: bytes, reason: str) -> StoredMessage:
    return StoredMessage(
        tag=tag,
        queue=queue,
        envelope=unreadable_envelope(blob, reason),
        exchange="",
        routing_key=queue,
        priority=0,
        delivery_count=count,
    )


def stored_messages(reply: Sequence[Any]) -> list[StoredMessage]:
    return [_unpack(*reply[i : i + 4]) for i in range(0, len(reply), 4)]


def redis_tags(tags: Sequence[DeliveryTag]) -> list[str]:
    return [t for t in tags if isinstance(t, str) and ":" in t]
