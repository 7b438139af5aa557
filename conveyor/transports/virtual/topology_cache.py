"""A connection's cached copy of the storage's topology, checked by version where it matters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from conveyor.transports.storage import Storage, TopologySnapshot

__all__ = ["TopologyCache"]


class TopologyCache:
    """The last topology loaded from ``storage``; concurrent loads share one storage read.

    A cached snapshot may be stale: writes to storage are checked against its version
    (:meth:`Storage.enqueue`), and negative answers (no such queue) are checked with
    :meth:`fresh` before they are believed. A load that finds a new storage epoch (the storage
    lost everything) awaits ``on_lost`` (which declares the connection's topology again)
    before it answers.
    """

    def __init__(
        self, storage: Storage, on_lost: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._storage = storage
        self._on_lost = on_lost
        self._epoch: str | None = None
        self._lock = asyncio.Lock()
        self.snapshot: TopologySnapshot | None = None
        self._loading: asyncio.Future[TopologySnapshot] | None = None

    def invalidate(self) -> None:
        """Forget the cached topology (and any load in flight): it changed."""
        self.snapshot = None
        self._loading = None

    async def load(self) -> TopologySnapshot:
        """Read the topology from storage and cache it."""
        # one load at a time: a burst of concurrent publishes shares it
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._load())
        loading = self._loading
        snap = await asyncio.shield(loading)
        if self._loading is loading:
            self.snapshot = snap
        return snap

    async def _load(self) -> TopologySnapshot:
        # One at a time: a load racing a restore must not answer with the half-restored topology.
        async with self._lock:
            snap = await self._storage.load_topology()
            if self._epoch is not None and snap.epoch != self._epoch and self._on_lost:
                await self._on_lost()
                snap = await self._storage.load_topology()
            self._epoch = snap.epoch
            return snap

    async def get(self) -> TopologySnapshot:
        """The cached topology, loaded if there is none (it may be stale)."""
        snap = self.snapshot
        if snap is None:
            snap = await self.load()
        return snap

    async def fresh(self) -> TopologySnapshot:
        """The current topology: the cached one if storage's version still matches it."""
        snap = self.snapshot
        if snap is None or await self._storage.topology_version() != snap.version:
            snap = await self.load()
        return snap
