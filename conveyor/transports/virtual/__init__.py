"""AMQP semantics implemented once, over the storage primitives of :mod:`..storage`.

:class:`VirtualTransport` routes with :func:`conveyor.routing.matching.destinations` over a
cached :class:`~conveyor.routing.topology.Topology` (validated by the storage's topology version
at every write), and turns storage leases into AMQP deliveries: priorities, TTL,
``x-max-length``, ``x-expires``, exclusive and auto-delete queues, dead-lettering with
RabbitMQ's ``x-death`` header, ``x-delivery-limit``, delayed delivery, prefetch, and
at-least-once redelivery when a connection dies (its lease, renewed by a background task while
the transport lives, lapses). ``memory``, ``sqlite`` and ``redis`` subclass it with a storage.

Acks are batched: ``ack`` records the tag and returns; pending acks travel with the consumer's
next fetch, or are written within a few milliseconds, and always before ``close`` returns or
before this transport reads stats.
"""

from conveyor.transports.virtual.transport import VirtualTransport, virtual_capabilities

__all__ = ["VirtualTransport", "virtual_capabilities"]
