"""Brokers behind one interface; the URL's scheme picks the transport.

``memory://`` (one process), ``sqlite:///path/broker.db`` (the embedded default),
``amqp://user:pass@host:5672/vhost`` (RabbitMQ, native) and ``redis://host:6379/0``.
Implementations are imported lazily, so a SQLite user never imports a RabbitMQ client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conveyor.transports.base import (
    Capabilities,
    Consumer,
    Delivery,
    DeliveryTag,
    Outgoing,
    QueueStats,
    Transport,
)
from conveyor.urls import class_for_url

__all__ = [
    "TRANSPORTS",
    "Capabilities",
    "Consumer",
    "Delivery",
    "DeliveryTag",
    "Outgoing",
    "QueueStats",
    "Transport",
    "open_transport",
]

# scheme -> "module:Class"
TRANSPORTS: dict[str, str] = {
    "memory": "conveyor.transports.memory:MemoryTransport",
    "sqlite": "conveyor.transports.sqlite:SQLiteTransport",
    "amqp": "conveyor.transports.amqp:AMQPTransport",
    "amqps": "conveyor.transports.amqp:AMQPTransport",
    "redis": "conveyor.transports.redis:RedisTransport",
    "rediss": "conveyor.transports.redis:RedisTransport",
}


def transport_class(url: str) -> type[Transport]:
    """The Transport class that serves ``url``; ConfigurationError for an unknown scheme."""
    cls: type[Transport] = class_for_url(url, TRANSPORTS, what="broker")
    return cls


def open_transport(url: str, options: Mapping[str, Any] | None = None) -> Transport:
    """Build the (unconnected) transport for ``url``; ``options`` are transport specific.

    Raises ConfigurationError for an unknown scheme or a malformed URL.
    """
    return transport_class(url).from_url(url, options)
