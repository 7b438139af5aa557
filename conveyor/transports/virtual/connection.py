"""What the parts of one virtual-broker connection share: the storage, the topology cached
over it, and the connection's id."""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.transports.storage import Storage
from conveyor.transports.virtual.topology_cache import TopologyCache

__all__ = ["VirtualConnection"]


@dataclass(frozen=True, slots=True)
class VirtualConnection:
    """One connection of a :class:`~conveyor.transports.virtual.VirtualTransport`.

    ``id`` names it to ``storage``: its leases, consumers and exclusive queues are held under
    it. ``topology`` is its cached copy of the storage's topology. The transport's publisher,
    housekeeper and ack batcher all work for this one connection.
    """

    storage: Storage
    topology: TopologyCache
    id: str
