"""Brokers behind one interface; the URL's scheme picks the transport.

``memory://`` (one process), ``sqlite:///path/broker.db`` (the embedded default),
``amqp://user:pass@host:5672/vhost`` (RabbitMQ, native) and ``redis://host:6379/0``.
Implementations are imported lazily, so a SQLite user never imports a RabbitMQ client.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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
    "LAYOUTS",
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


# (scheme, layout) -> "module:Class", for brokers whose storage layout is an option.
LAYOUTS: dict[tuple[str, str], str] = {
    ("redis", "kombu"): "conveyor.transports.redis.kombu_transport:KombuRedisTransport",
    ("rediss", "kombu"): "conveyor.transports.redis.kombu_transport:KombuRedisTransport",
}


def _layout(url: str, options: Mapping[str, Any] | None) -> str | None:
    if options and "layout" in options:
        return str(options["layout"])
    for name, value in parse_qsl(urlsplit(url).query):
        if name == "layout":
            return value
    return None


def transport_class(url: str, options: Mapping[str, Any] | None = None) -> type[Transport]:
    """The Transport class that serves ``url`` (with the ``layout`` option, if it names one of
    :data:`LAYOUTS`); ConfigurationError for an unknown scheme."""
    layout = _layout(url, options)
    scheme = urlsplit(url).scheme.lower()
    if layout is not None and (scheme, layout) in LAYOUTS:
        module_name, _, class_name = LAYOUTS[scheme, layout].partition(":")
        chosen: type[Transport] = getattr(importlib.import_module(module_name), class_name)
        return chosen
    cls: type[Transport] = class_for_url(url, TRANSPORTS, what="broker")
    return cls


def open_transport(url: str, options: Mapping[str, Any] | None = None) -> Transport:
    """Build the (unconnected) transport for ``url``; ``options`` are transport specific.

    Raises ConfigurationError for an unknown scheme or a malformed URL.
    """
    return transport_class(url, options).from_url(url, options)
