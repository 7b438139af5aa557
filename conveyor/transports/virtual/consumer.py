"""The virtual broker's consumer: deliveries leased from storage in batches, within its
prefetch credit, woken by its storage's listener.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from conveyor.transports.base import Consumer, Delivery, DeliveryTag, Subscription
from conveyor.transports.storage import Listener, StoredMessage

__all__ = ["ConsumerHost", "VirtualConsumer", "delivery_of"]

FETCH_BATCH = 256


class ConsumerHost(Protocol):
    """What a :class:`VirtualConsumer` needs of the transport that made it."""

    @property
    def is_connected(self) -> bool:
        """False once the transport closed: the consumer stops."""
        ...

    async def fetch(
        self, queues: Sequence[str], limit: int, *, carry_acks: bool
    ) -> tuple[list[StoredMessage], bool]:
        """Lease up to ``limit`` deliverable messages of ``queues`` (see
        ``VirtualTransport.fetch``); True with them when nothing more was deliverable."""
        ...

    def ack_later(self, tag: DeliveryTag) -> None:
        """Ack the delivery ``tag`` with the next batch of acks."""
        ...

    async def release(self, tags: Sequence[DeliveryTag]) -> None:
        """Give leased messages back to their queues, unsettled."""
        ...

    async def idle_timeout(self, queues: Sequence[str]) -> float:
        """How long to wait for a wake-up before looking at ``queues`` again."""
        ...

    async def any_queue_exists(self, queues: Sequence[str]) -> bool:
        """Whether any of ``queues`` still exists (checked against storage)."""
        ...

    async def end_consumer(self, tag: str, give_back: Callable[[], Awaitable[None]]) -> None:
        """Forget consumer ``tag``; while still connected, await ``give_back`` (which releases
        what it holds), then unregister it from storage."""
        ...


def delivery_of(message: StoredMessage, consumer_tag: str | None) -> Delivery:
    """The delivery of a leased message, to the consumer ``consumer_tag`` (None for ``get``)."""
    return Delivery(
        envelope=message.envelope,
        queue=message.queue,
        exchange=message.exchange,
        routing_key=message.routing_key,
        redelivered=message.delivery_count > 1,
        delivery_count=message.delivery_count,
        tag=message.tag,
        consumer_tag=consumer_tag,
    )


class VirtualConsumer(Consumer):
    """A consumer over storage leases: fetches in batches within its prefetch credit.

    Its transport calls :meth:`settled` when one of its deliveries is acked or nacked, and
    :meth:`forget_leases` when storage declared the connection dead (its leases are gone).
    """

    def __init__(
        self, host: ConsumerHost, subscription: Subscription, tag: str, listener: Listener
    ) -> None:
        super().__init__(subscription, tag)
        self._host = host
        self._listener = listener
        self._buffer: deque[StoredMessage] = deque()
        self._unsettled: set[DeliveryTag] = set()
        self._settled = asyncio.Event()
        self._cancelled = False
        self._turn = 0
        self._inflight: asyncio.Future[tuple[list[StoredMessage], bool]] | None = None
        self._drained = False  # the last fetch got fewer than it asked for

    def __aiter__(self) -> VirtualConsumer:
        return self

    def _credit(self) -> int:
        if self.no_ack or self.prefetch == 0:
            return FETCH_BATCH
        return min(FETCH_BATCH, self.prefetch - len(self._unsettled))

    def _rotated(self) -> list[str]:
        n = len(self.queues)
        self._turn = (self._turn + 1) % n
        return [*self.queues[self._turn :], *self.queues[: self._turn]]

    async def __anext__(self) -> Delivery:
        host = self._host
        waited = False
        while True:
            if self._cancelled or not host.is_connected:
                await self._give_back()
                raise StopAsyncIteration
            if self._buffer:
                message = self._buffer.popleft()
                if self.no_ack:
                    host.ack_later(message.tag)
                else:
                    self._unsettled.add(message.tag)
                return delivery_of(message, self.tag)
            credit = self._credit()
            if credit <= 0:
                self._settled.clear()
                await self._settled.wait()
                continue
            messages: list[StoredMessage] = []
            if self._inflight is None and self._drained and not waited:
                # The last fetch took all there was: a publish since then wakes the listener,
                # so wait for that instead of asking the storage again straight away.
                self._drained = False
            else:
                if self._inflight is None:
                    # acks ride along after a wait; a fetch straight after a delivery leaves
                    # them to the ack timer, so a trickle of messages costs one write each
                    self._inflight = asyncio.ensure_future(
                        host.fetch(self._rotated(), credit, carry_acks=waited)
                    )
                # shielded: if this call is cancelled, the next one picks up what was leased
                messages, drained = await asyncio.shield(self._inflight)
                self._inflight = None
                self._drained = drained and bool(messages)
            if messages:
                self._buffer.extend(messages)
                continue
            if waited:
                # woken (or timed out) for nothing: maybe its queues were deleted (RabbitMQ
                # cancels a consumer whose queues are all gone)
                if not await host.any_queue_exists(self.queues):
                    await self.cancel()
                if self._cancelled:
                    continue
            await self._listener.wait(await host.idle_timeout(self.queues))
            waited = True

    def settled(self, tag: DeliveryTag) -> None:
        """The delivery ``tag`` was acked or nacked: it no longer counts against prefetch."""
        self._unsettled.discard(tag)
        self._settled.set()

    def forget_leases(self) -> None:
        """Drop what this consumer holds: storage gave its leases back to the queues."""
        self._buffer.clear()
        self._unsettled.clear()
        self._settled.set()

    async def _give_back(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            with contextlib.suppress(Exception):
                self._buffer.extend((await inflight)[0])
        if not self._buffer:
            return
        tags = [m.tag for m in self._buffer]
        self._buffer.clear()
        if self._host.is_connected:
            await self._host.release(tags)

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._settled.set()
        await self._listener.close()
        await self._host.end_consumer(self.tag, self._give_back)
