"""Reading a dead-letter queue without losing it: take its messages, settle some, return the rest.

A scan (:func:`scanning`) takes (``get`` without ack) every ready message, or the first
``limit``, and gives back (nack with requeue) every one it did not settle when it ends, error
or not; both the virtual brokers and RabbitMQ put a requeued message back at its old place, so
the queue's order survives. Each scan counts as one more delivery of every message it took
(``redelivered`` becomes true, the delivery count grows by one), which matters only for a queue
with ``x-delivery-limit``.

A replay publishes the message, its dead-letter headers removed, to the exchange and routing key
it was first sent with, as ``mandatory``, and acks the dead letter only after the broker has
confirmed that publish: a message that reaches no queue stays where it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from conveyor.protocol.dead_letters import (
    DEAD_LETTER_HEADERS,
    DEAD_LETTERED_AT,
    ORIGINAL_EXCHANGE,
    ORIGINAL_ROUTING_KEY,
)
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import FrozenMapping
from conveyor.transports.base import Delivery, Transport

__all__ = ["DeadLetter", "DeadLetterScan", "replayed_envelope", "scanning"]

_REMOVED_ON_REPLAY = frozenset(
    (*DEAD_LETTER_HEADERS, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, DEAD_LETTERED_AT, "x-death")
)
_REMOVED_PREFIXES = ("x-first-death-", "x-last-death-")


def _deaths(headers: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return []
    return [d for d in deaths if isinstance(d, Mapping)]


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _letter_id(delivery: Delivery) -> str:
    envelope = delivery.envelope
    for candidate in (envelope.headers.get("id"), envelope.message_id, envelope.correlation_id):
        if isinstance(candidate, str) and candidate:
            return candidate
    return f"#{delivery.tag}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message: its id (the task id, else the message or correlation id),
    task name, the queue it came from, why, which worker, when (None where nothing says), and
    the exchange and routing key it was first sent with.

    A worker's dead letters carry ``x-conveyor-*`` headers; the broker's (rejected, expired,
    over a delivery limit) carry RabbitMQ's ``x-death``, newest first.
    """

    id: str
    task: str | None
    queue: str | None
    reason: str | None
    worker: str | None
    time: datetime | None
    exchange: str
    routing_key: str
    delivery: Delivery

    @classmethod
    def from_delivery(cls, delivery: Delivery) -> DeadLetter:
        headers = delivery.envelope.headers
        reason_header, worker_header, queue_header = DEAD_LETTER_HEADERS
        deaths = _deaths(headers)
        newest = deaths[0] if deaths else {}
        oldest = deaths[-1] if deaths else {}
        keys = oldest.get("routing-keys")
        first_key = keys[0] if isinstance(keys, list) and keys else None
        exchange = _text(headers.get(ORIGINAL_EXCHANGE))
        if exchange is None:
            exchange = _text(oldest.get("exchange"))
        routing_key = _text(headers.get(ORIGINAL_ROUTING_KEY)) or _text(first_key)
        return cls(
            id=_letter_id(delivery),
            task=_text(headers.get("task")),
            queue=_text(headers.get(queue_header)) or _text(newest.get("queue")),
            reason=_text(headers.get(reason_header)) or _text(newest.get("reason")),
            worker=_text(headers.get(worker_header)),
            time=_time(headers.get(DEAD_LETTERED_AT)) or _time(newest.get("time")),
            exchange=exchange if exchange is not None else "",
            routing_key=routing_key if routing_key is not None else "",
            delivery=delivery,
        )

    def summary(self) -> dict[str, Any]:
        """The listing's fields as JSON values."""
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason,
            "worker": self.worker,
            "time": self.time.isoformat() if self.time else None,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
        }

    def details(self) -> dict[str, Any]:
        """The summary plus the message's headers, properties and body (JSON when it is)."""
        envelope = self.delivery.envelope
        try:
            body: Any = orjson.loads(envelope.body)
        except orjson.JSONDecodeError:
            body = envelope.body.decode("utf-8", errors="replace")
        return {
            **self.summary(),
            "headers": dict(envelope.headers),
            "properties": envelope.properties(),
            "body": body,
        }


def replayed_envelope(envelope: Envelope) -> Envelope:
    """``envelope`` without the dead-letter headers (conveyor's, and RabbitMQ's ``x-death``)."""
    kept = {
        k: v
        for k, v in envelope.headers.items()
        if k not in _REMOVED_ON_REPLAY and not k.startswith(_REMOVED_PREFIXES)
    }
    return replace(envelope, headers=FrozenMapping(kept))


class DeadLetterScan:
    """The messages of one scan of dead-letter queue ``queue`` (``letters``), from
    :func:`scanning`; :meth:`replay` and :meth:`drop` settle some, the rest go back at its end."""

    def __init__(self, transport: Transport, queue: str) -> None:
        self.transport = transport
        self.queue = queue
        self.letters: list[DeadLetter] = []
        self._held: dict[int, Delivery] = {}

    async def _take(self, limit: int | None) -> None:
        # Until the queue runs dry, not up to a count read first: on RabbitMQ a count read on
        # the command channel may not yet see messages just given back on the get channel.
        await self.transport.queue_stats(self.queue)  # NotFound before anything is taken
        while limit is None or len(self.letters) < limit:
            delivery = await self.transport.get(self.queue)
            if delivery is None:
                return
            self._held[id(delivery)] = delivery
            self.letters.append(DeadLetter.from_delivery(delivery))

    async def _give_back(self) -> None:
        held = list(self._held.values())
        self._held.clear()
        for delivery in held:
            await self.transport.nack(delivery, requeue=True)

    def select(self, ids: Sequence[str] = (), *, task: str | None = None) -> list[DeadLetter]:
        """The letters whose id is in ``ids`` (every letter when ``ids`` is empty), of ``task``
        when given."""
        wanted = set(ids)
        return [
            letter
            for letter in self.letters
            if (not wanted or letter.id in wanted) and (task is None or letter.task == task)
        ]

    async def replay(self, letter: DeadLetter) -> None:
        """Publish ``letter`` back where it was first sent, then ack it.

        Raises Unroutable (no queue took it) or NotFound (no such exchange) and keeps the dead
        letter; it is acked only after the broker confirmed the publish.
        """
        await self.transport.publish(
            replayed_envelope(letter.delivery.envelope),
            exchange=letter.exchange,
            routing_key=letter.routing_key,
            mandatory=True,
        )
        await self.drop(letter)

    async def drop(self, letter: DeadLetter) -> None:
        """Remove ``letter`` from the dead-letter queue for good (ack it)."""
        delivery = self._held.pop(id(letter.delivery), None)
        if delivery is not None:
            await self.transport.ack(delivery)


@contextlib.asynccontextmanager
async def scanning(
    transport: Transport, queue: str, *, limit: int | None = None
) -> AsyncIterator[DeadLetterScan]:
    """Scan dead-letter queue ``queue``: take (up to ``limit`` of) the messages ready now, yield
    the scan, and give back every one not settled, whatever happens. NotFound if no such queue."""
    scan = DeadLetterScan(transport, queue)
    try:
        await scan._take(limit)
        yield scan
    finally:
        await scan._give_back()
