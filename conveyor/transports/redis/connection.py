"""One Redis server as a conveyor component uses it: a client, a pipelined link and a pub/sub hub.

The Redis storage (the broker's) and the Redis result backend both hold a
:class:`RedisConnection`: it opens the three together with a first call that proves Redis is
there, runs every later call through :func:`~.client.run` (retrying through a lost connection
for up to ``reconnect_timeout`` seconds), and closes the three together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis

from conveyor.errors import BrokerUnavailable
from conveyor.transports.redis.client import make_client, run
from conveyor.transports.redis.link import RedisLink
from conveyor.transports.redis.pubsub import PubSubHub
from conveyor.urls import redacted

__all__ = ["RedisConnection"]

T = TypeVar("T")


class RedisConnection:
    """A redis-py client, the :class:`RedisLink` over it and the :class:`PubSubHub` beside it.

    ``url`` is what redis-py reads (conveyor's own options taken out); ``what`` names the owner
    in error messages ("Redis storage", "Redis result backend"). Belongs to the event loop that
    opened it. May be opened again after :meth:`close`.
    """

    def __init__(
        self, url: str, *, reconnect_timeout: float, socket_timeout: float, what: str
    ) -> None:
        self.url = url
        self.what = what
        self.socket_timeout = socket_timeout
        self._patience = reconnect_timeout
        self._client: aioredis.Redis | None = None
        self._link: RedisLink | None = None
        self._hub: PubSubHub | None = None
        self._closed = False

    @property
    def is_open(self) -> bool:
        return self._client is not None

    def _not_open(self) -> BrokerUnavailable:
        state = "closed" if self._closed else "not open"
        return BrokerUnavailable(f"the {self.what} for {redacted(self.url)} is {state}")

    @property
    def client(self) -> aioredis.Redis:
        """The redis-py client (for pipelines); BrokerUnavailable unless open."""
        if self._client is None:
            raise self._not_open()
        return self._client

    @property
    def link(self) -> RedisLink:
        """The pipelined connection; BrokerUnavailable unless open."""
        if self._link is None:
            raise self._not_open()
        return self._link

    @property
    def hub(self) -> PubSubHub:
        """The shared subscriber connection; BrokerUnavailable unless open."""
        if self._hub is None:
            raise self._not_open()
        return self._hub

    async def open(self, first: Callable[[RedisLink], Awaitable[T]], doing: str) -> T:
        """Connect, and return what ``first(link)`` returns: the first call, made once (no
        retry), within ``socket_timeout``. Anything it raises closes everything again and
        propagates (BrokerUnavailable when Redis cannot be reached). Call only when not open.
        """
        client = make_client(self.url)
        link = RedisLink(client, timeout=self.socket_timeout)
        try:
            answer = await run(
                lambda: first(link),
                url=self.url,
                doing=doing,
                patience=0,
                timeout=self.socket_timeout + 1,
            )
        except BaseException:
            await link.close()
            await client.aclose()
            raise
        self._client, self._link, self._closed = client, link, False
        self._hub = PubSubHub(client, url=self.url)
        return answer

    def run(
        self, call: Callable[[], Awaitable[T]], doing: str, *, timeout: float | None = None
    ) -> Awaitable[T]:
        """``call()`` through :func:`~.client.run` with this connection's patience; ``timeout``
        only for calls the link does not bound (pipelines of the redis-py client)."""
        return run(call, url=self.url, doing=doing, patience=self._patience, timeout=timeout)

    async def script(self, source: str, args: Sequence[Any], doing: str) -> Any:
        """Run the Lua script ``source`` with ``args`` (see :meth:`RedisLink.run_script`)."""
        link = self.link
        return await self.run(lambda: link.run_script(source, args), doing)

    async def close(self) -> None:
        """Close the link, the hub and the client (idempotent); pending calls fail."""
        self._closed = True
        client, self._client = self._client, None
        hub, self._hub = self._hub, None
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        if hub is not None:
            await hub.close()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
