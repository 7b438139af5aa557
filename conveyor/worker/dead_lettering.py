"""Where a worker puts a message it will not run: its queue's dead-letter exchange, else the
``task_dead_letter_queue``, with the reason, the worker and the queue in its headers."""

from __future__ import annotations

import logging
import time

from conveyor.errors import NotFound, Unroutable
from conveyor.protocol.dead_letters import dead_letter_headers
from conveyor.routing.entities import Queue
from conveyor.transports.base import Delivery, Transport

__all__ = ["DeadLetters"]

log = logging.getLogger("conveyor.worker")


class DeadLetters:
    """A worker's dead-lettering: ``hostname`` is stamped on each letter, ``fallback_queue``
    (declared on first use) takes what no dead-letter exchange does."""

    def __init__(self, hostname: str, fallback_queue: str) -> None:
        self.hostname = hostname
        self.fallback_queue = fallback_queue
        self._declared = False

    async def send(
        self, transport: Transport, delivery: Delivery, reason: str, queue: Queue | None
    ) -> str:
        """Publish a copy of ``delivery`` with the dead-letter headers to the dead-letter
        exchange of ``queue`` (the queue it came from, when the worker declared it) or else to
        the fallback queue; return where it went, in words. The caller acks the original.

        A dead-letter exchange that routes it nowhere or does not exist is logged and the
        fallback queue used, so the message is never stranded unacked.
        """
        envelope = delivery.envelope.replace_headers(
            **dead_letter_headers(
                reason=reason,
                worker=self.hostname,
                queue=delivery.queue,
                exchange=delivery.exchange,
                routing_key=delivery.routing_key,
                at=time.time(),
            )
        )
        dlx = queue.dead_letter_exchange if queue is not None else None
        if queue is not None and dlx is not None:
            routing_key = queue.dead_letter_routing_key or delivery.routing_key
            try:
                await transport.publish(
                    envelope, exchange=dlx, routing_key=routing_key, mandatory=True
                )
                return f"exchange {dlx!r}"
            except (Unroutable, NotFound) as exc:  # a missing exchange must not strand it
                log.warning(
                    "dead-letter exchange %r of queue %r takes nothing for %r (%s); using queue %r",
                    dlx,
                    delivery.queue,
                    routing_key,
                    exc,
                    self.fallback_queue,
                )
        if not self._declared:
            await transport.declare_queue(Queue(self.fallback_queue))
            self._declared = True
        await transport.publish(envelope, exchange="", routing_key=self.fallback_queue)
        return f"queue {self.fallback_queue!r}"
