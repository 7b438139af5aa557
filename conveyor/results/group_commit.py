"""Group commit: what callers store while one batch is being written goes together in the next.

A result backend whose every write is a transaction (SQLite, PostgreSQL) keeps its stores in a
:class:`GroupCommit`: the first caller starts a flush on the event loop, callers that arrive
while it writes join the next batch, and each caller's ``await`` ends when its own batch is
committed (or raises that batch's error).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Items written in batches by ``write`` (one call a batch, in arrival order)."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self._write = write
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[T]) -> None:
        """Write ``items`` with the batch being gathered; return once it is committed."""
        if not items:
            return
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            fut: asyncio.Future[None] = loop.create_future()
            self._pending.append((item, fut))
            futures.append(fut)
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        await asyncio.gather(*futures)

    async def drain(self) -> None:
        """Write whatever is waiting (at close); a failure is left to the callers it fails."""
        if self._pending or self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flush()

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write([item for item, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._flushing = None
