"""``redis://host:6379/0`` (and ``rediss://``): the virtual broker with its storage in Redis.

AMQP's semantics come from :class:`~conveyor.transports.virtual.VirtualTransport`; this package
only keeps records and messages in Redis and moves them (:mod:`.storage`), each step one Lua
script (:mod:`.lua`, ``scripts/*.lua``), so every producer and worker sees one topology and no
step is half done.

Keys, under a prefix (``conveyor:`` unless the ``key_prefix`` option says otherwise)::

    topo:ver  topology version        topo:ex / topo:q / topo:b   exchanges, queues, bindings
    topo:maxlen  x-max-length by queue     used  last use of each queue (for x-expires)
    seq  message sequence     exp  ready messages with a TTL, by expiry (zset of tags)
    conns  live connections by lease deadline (zset)
    q:<queue>:r  ready messages by score     q:<queue>:d  delayed ones by due time
    q:<queue>:dp  priority of delayed ones    q:<queue>:m  message bodies by id
    q:<queue>:n  delivery counts of messages given back     q:<queue>:l  leases by id
    q:<queue>:c  consumers (``connection\\ntag``)
    cl:<connection>  tags leased to it    cc:<connection>  its consumers
    ch:<connection>  its last dequeue, replayed if the reply was lost

A publish writes every copy in one script that first checks the topology version; concurrent
publishes share one script call. A consumed message is leased, not removed: it moves from the
ready set to the lease hash, and the connection's lease deadline (renewed by the transport's
housekeeper) decides when a dead worker's messages go back, with their delivery count kept.
Ready scores keep priorities exact for 2**45 (35 trillion) messages per prefix (beyond, levels
would blur). Consumers block on pub/sub wake-ups (``w:<queue>`` channels, one shared subscriber
connection per transport), sent when a queue goes from nothing ready to something ready or gets
a delayed message; messages themselves never travel over pub/sub. Commands go through one
pipelined connection (:class:`~.link.RedisLink`, held with the client and the pub/sub hub by a
:class:`~.connection.RedisConnection`), and every call retries through a lost
connection with backoff for up to ``reconnect_timeout`` seconds; a publish or fetch whose reply
was lost is recognized when sent again, not applied twice. ``schema`` marks the prefix as
conveyor's, so foreign or newer data is refused untouched.

``layout='kombu'`` (URL query or ``broker_transport_options``) picks kombu's layout instead
(:mod:`.kombu_transport`), to share the broker with Celery services.

Options (URL query or ``broker_transport_options``): ``key_prefix``, ``lease`` (seconds a dead
worker's messages stay leased, default 30), ``poll_interval`` (default 1), ``reconnect_timeout``
(default 60), ``socket_timeout`` (default 10). Other URL query parameters go to redis-py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

from conveyor.transports.base import Capabilities, Consumer, Subscription
from conveyor.transports.redis.client import split_url
from conveyor.transports.redis.kombu_probe import (
    KOMBU_PRIORITY_OPTIONS,
    conveyor_layout_options,
    warn_kombu_keys,
)
from conveyor.transports.redis.storage import RedisStorage
from conveyor.transports.virtual import VirtualTransport, virtual_capabilities
from conveyor.urls import parse_options

__all__ = ["RedisStorage", "RedisTransport"]

_OPTIONS: dict[str, tuple[type, Any]] = {
    "key_prefix": (str, "conveyor:"),
    "lease": (float, 30.0),
    "poll_interval": (float, 1.0),
    "reconnect_timeout": (float, 60.0),
    "socket_timeout": (float, 10.0),
}


class RedisTransport(VirtualTransport):
    """The virtual broker on Redis: one topology and one set of queues for every process."""

    capabilities: ClassVar[Capabilities] = virtual_capabilities(shared=True)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        own_url, client_url = split_url(url, {*_OPTIONS, "layout", *KOMBU_PRIORITY_OPTIONS})
        query = {k: v for k, v in parse_qsl(urlsplit(own_url).query) if k not in _OPTIONS}
        values = parse_options(
            own_url, conveyor_layout_options({**query, **(options or {})}), _OPTIONS
        )
        storage = RedisStorage(
            client_url,
            key_prefix=values["key_prefix"],
            reconnect_timeout=values["reconnect_timeout"],
            socket_timeout=values["socket_timeout"],
        )
        transport = cls(url, storage, lease=values["lease"], poll_interval=values["poll_interval"])
        transport._client_url = client_url
        return transport

    _client_url = ""

    async def _consume(self, subscription: Subscription) -> Consumer:
        """Consume as the virtual broker does; a queue that also has kombu's structures in
        this Redis is logged as a warning (see :mod:`.kombu_probe`)."""
        consumer = await super()._consume(subscription)
        if self._client_url:
            await warn_kombu_keys(self._client_url, subscription.queues)
        return consumer
