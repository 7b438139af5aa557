"""Acks and nacks on RabbitMQ, batched per channel: the deliveries a channel holds and settles.

A delivery's tag is its channel's serial number above the broker's delivery tag (``TAG_BITS``),
so a settle finds its channel, and one for a channel gone since (RabbitMQ requeued its
deliveries) is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from conveyor.transports.amqp.channel import Channel

if TYPE_CHECKING:
    from conveyor.transports.amqp.consumer import AMQPConsumer

__all__ = ["TAG_BITS", "TAG_MASK", "AckingChannel"]

TAG_BITS = 48
TAG_MASK = (1 << TAG_BITS) - 1
_ACK_DELAY = 0.002


class AckingChannel:
    """One channel, with the deliveries it holds unsettled and the settles not yet sent.

    Settles are coalesced: acks wait up to ``_ACK_DELAY`` seconds, or until ``batch`` of them are
    pending (nacks: one event-loop turn), then the settled prefix of the unsettled deliveries
    goes as one ``multiple`` ack and the rest one by one. Fewer, larger writes matter: every
    socket write wakes the broker.
    """

    __slots__ = (
        "acks",
        "batch",
        "close_when_idle",
        "flushing",
        "nacks",
        "owner",
        "paused",
        "raw",
        "serial",
        "timer",
        "unsettled",
    )

    def __init__(self, serial: int, raw: Channel, owner: AMQPConsumer | None) -> None:
        self.serial = serial
        self.raw = raw
        self.owner = owner
        self.unsettled: dict[int, str] = {}
        self.acks: set[int] = set()
        self.nacks: list[tuple[int, bool]] = []
        self.flushing = False
        self.close_when_idle = False
        self.paused = False
        self.batch = 1
        self.timer: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return not self.raw.is_closed

    def hold(self, delivery_tag: int, queue: str) -> int:
        self.unsettled[delivery_tag] = queue
        return (self.serial << TAG_BITS) | delivery_tag

    def settle(self, delivery_tag: int, requeue: bool | None) -> bool:
        """Queue an ack (``requeue`` None) or a nack; False if the delivery is not held here."""
        if delivery_tag not in self.unsettled or delivery_tag in self.acks:
            return False
        if requeue is None:
            self.acks.add(delivery_tag)
        else:
            del self.unsettled[delivery_tag]
            self.nacks.append((delivery_tag, requeue))
        if self.flushing:
            return True
        loop = asyncio.get_running_loop()
        if requeue is None and len(self.acks) < self.batch:
            if self.timer is None:
                self.timer = loop.call_later(_ACK_DELAY, self._flush)
        else:
            self.flushing = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            loop.call_soon(self._flush)
        return True

    def send_pending(self) -> None:
        """Write the queued acks and nacks now, ahead of anything sent on this channel later."""
        raw = self.raw
        if raw.is_closed:
            self.acks.clear()
            self.nacks.clear()
            return
        for tag, requeue in self.nacks:
            raw.nack(tag, requeue=requeue)
        self.nacks.clear()
        acks = self.acks
        if not acks:
            return
        last, count = 0, 0
        for tag in self.unsettled:
            if tag not in acks:
                break
            last, count = tag, count + 1
        for _ in range(count):
            tag = next(iter(self.unsettled))
            del self.unsettled[tag]
            acks.discard(tag)
        if count:
            raw.ack(last, multiple=count > 1)
        for tag in sorted(acks):
            del self.unsettled[tag]
            raw.ack(tag)
        acks.clear()

    def _flush(self) -> None:
        self.flushing = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.paused:
            return
        self.send_pending()
        if self.close_when_idle and not self.unsettled and self.alive:
            asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.raw.close()
