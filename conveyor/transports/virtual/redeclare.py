"""What a connection declared, kept so it can declare it all again when storage lost it.

A Redis restarted without persistence comes back empty: no exchanges, queues or bindings.
RabbitMQ's clients declare their topology again on reconnect; here a connection notices the new
storage epoch (see :class:`~conveyor.transports.storage.TopologySnapshot`) and restores from
this record what it had declared, so a worker goes on consuming and a client goes on sending.
Messages the storage lost are lost: only persistence (AOF) keeps them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from conveyor.routing.entities import Exchange, Queue
from conveyor.routing.topology import BoundBinding
from conveyor.transports.storage import Storage

__all__ = ["Declared"]

log = logging.getLogger("conveyor.transports")


@dataclass
class Declared:
    """Exchanges, queues (with their owner) and bindings declared through one connection, in
    declaration order; deletions through it take them out again."""

    exchanges: dict[str, Exchange] = field(default_factory=dict)
    queues: dict[str, tuple[Queue, str | None]] = field(default_factory=dict)
    bindings: list[BoundBinding] = field(default_factory=list)

    def exchange(self, exchange: Exchange) -> None:
        self.exchanges[exchange.name] = exchange

    def queue(self, queue: Queue, owner: str | None) -> None:
        self.queues[queue.name] = (queue, owner)

    def binding(self, bound: BoundBinding) -> None:
        if bound not in self.bindings:  # a list: arguments may hold what cannot be hashed
            self.bindings.append(bound)

    def forget_exchange(self, name: str) -> None:
        self.exchanges.pop(name, None)
        self.bindings = [b for b in self.bindings if b.exchange != name]

    def forget_queue(self, name: str) -> None:
        self.queues.pop(name, None)
        self.bindings = [b for b in self.bindings if b.queue != name]

    def forget_binding(self, bound: BoundBinding) -> None:
        self.bindings = [b for b in self.bindings if b != bound]

    async def restore(self, storage: Storage, where: str) -> None:
        """Declare everything recorded again in ``storage`` (which lost it), logging once."""
        log.warning(
            "%s lost its data (restarted empty?): declaring this connection's %d exchange(s), "
            "%d queue(s) and %d binding(s) again; messages it held are gone",
            where,
            len(self.exchanges),
            len(self.queues),
            len(self.bindings),
        )
        for exchange in self.exchanges.values():
            await storage.add_exchange(exchange)
        for queue, owner in self.queues.values():
            await storage.add_queue(queue, owner=owner)
        for bound in self.bindings:
            await storage.add_binding(bound)
