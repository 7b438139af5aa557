"""A connection's acks, written to storage in batches: with its next fetch, or a few
milliseconds after the first one waits, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from conveyor.transports.base import DeliveryTag
from conveyor.transports.virtual.connection import VirtualConnection

__all__ = ["AckBatcher"]

log = logging.getLogger("conveyor.transports")

_ACK_BATCH = 512
_ACK_DELAY = 0.005


class AckBatcher:
    """The acks of ``connection`` not yet written to ``storage``.

    :meth:`add` only records a tag (and arms a timer that writes the batch soon); a fetch
    :meth:`take`\\ s the pending tags to write with its lease, and :meth:`put_back` them if
    that write fails. :meth:`flush` writes them now. A write that fails in the background is
    logged: its messages are redelivered when the lease lapses.
    """

    def __init__(self, connection: VirtualConnection) -> None:
        self._storage = connection.storage
        self._connection = connection.id
        self._pending: list[DeliveryTag] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False

    def start(self) -> None:
        """Allow background writes (the connection is up)."""
        self._running = True

    def add(self, tag: DeliveryTag) -> None:
        """Record an ack, to be written within a few milliseconds."""
        self._pending.append(tag)
        if len(self._pending) >= _ACK_BATCH:
            self._flush_soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_ACK_DELAY, self._flush_soon)

    def take(self) -> list[DeliveryTag]:
        """The pending acks, for the caller to write (they are no longer pending)."""
        tags, self._pending = self._pending, []
        return tags

    def put_back(self, tags: list[DeliveryTag]) -> None:
        """Make ``tags`` from :meth:`take` pending again: their write failed."""
        self._pending[:0] = tags

    async def flush(self, tags: Sequence[DeliveryTag] = ()) -> None:
        """Write ``tags`` and every pending ack now (the messages are gone when this returns)."""
        self._pending.extend(tags)
        while self._pending:
            written = self.take()
            try:
                await self._storage.ack(written, connection=self._connection)
            except BaseException:
                self.put_back(written)
                raise

    async def close(self) -> None:
        """Wait for a background write, then write what is still pending."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.flush()

    def stop(self) -> None:
        """No more background writes (the connection is down)."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush_soon(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending and self._running and self._task is None:
            self._task = asyncio.create_task(self._background_flush())

    async def _background_flush(self) -> None:
        try:
            await self.flush()
        except Exception:
            log.exception("could not write acks; the messages will be redelivered")
        finally:
            self._task = None
