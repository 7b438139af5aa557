"""``memory://name``: results kept in this process, shared by every App using the same name.

``memory://`` and ``memory://default`` name the same store, as they do for the memory broker.

For tests and single-process programs. Results are stored as JSON, exactly as the other backends
store them, so a value that would not survive a real backend does not survive this one either.
Waiters are woken directly (thread-safely) when a result is stored: nothing polls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Self
from urllib.parse import urlsplit

from conveyor.errors import ConfigurationError
from conveyor.lifecycle import PerName
from conveyor.results.base import BackendHost, BatchingBackend, ChordJoin, ChordPart, StoreRequest
from conveyor.results.chords import ChordBook
from conveyor.results.meta import ResultMeta, pick_result
from conveyor.results.waiters import FutureWatch

__all__ = ["MemoryBackend"]

_PLAIN = ""


class _Store:
    """One named in-process result store, used from any thread and any event loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: dict[str, dict[str, bytes]] = {}
        self.done_at: dict[str, float] = {}
        self.watchers: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self.chords = ChordBook()

    def put(self, requests: Sequence[StoreRequest]) -> None:
        wake: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        with self.lock:
            for req in requests:
                meta = req.meta
                key = (meta.worker or "?") if req.per_worker else _PLAIN
                self.results.setdefault(meta.task_id, {})[key] = meta.to_json()
                self.done_at[meta.task_id] = meta.date_done or time.time()
                wake.extend(self.watchers.pop(meta.task_id, ()))
        for loop, fut in wake:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, fut)

    def snapshot(self, task_id: str) -> dict[str, ResultMeta]:
        with self.lock:
            return {k: ResultMeta.from_json(v) for k, v in self.results.get(task_id, {}).items()}

    def watch(self, task_id: str) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self.lock:
            self.watchers.setdefault(task_id, []).append((loop, fut))
        return fut

    def unwatch(self, task_id: str, fut: asyncio.Future[None]) -> None:
        with self.lock:
            entries = self.watchers.get(task_id)
            if entries is None:
                return
            entries[:] = [(lp, f) for lp, f in entries if f is not fut]
            if not entries:
                del self.watchers[task_id]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# The process-wide stores, one per URL name.
_store_for: PerName[_Store] = PerName(lambda name: _Store())


class MemoryBackend(BatchingBackend):
    """Results in a process-wide store named by the URL (``memory://a`` is not ``memory://b``)."""

    joins_chords = True

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self._store = _store_for(name)

    @classmethod
    def from_url(cls, url: str, *, host: BackendHost) -> Self:
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ConfigurationError(f"not a memory:// URL: {url!r}")
        return cls(url, (parts.netloc + parts.path).strip("/") or "default")

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def store_many(self, requests: Sequence[StoreRequest]) -> None:
        self._store.put(requests)

    async def get(self, task_id: str) -> ResultMeta | None:
        return pick_result(self._store.snapshot(task_id))

    def peek(self, task_id: str) -> ResultMeta | None:
        meta = pick_result(self._store.snapshot(task_id))
        return meta if meta is not None and meta.ready else None

    async def _read_all(self, task_id: str) -> Mapping[str, ResultMeta]:
        return self._store.snapshot(task_id)

    def _watch_results(self, task_id: str) -> FutureWatch:
        store = self._store
        return FutureWatch(lambda: store.watch(task_id), lambda fut: store.unwatch(task_id, fut))

    async def forget(self, task_id: str) -> None:
        with self._store.lock:
            self._store.results.pop(task_id, None)
            self._store.done_at.pop(task_id, None)

    async def cleanup(self, *, older_than: float) -> int:
        with self._store.lock:
            old = [tid for tid, at in self._store.done_at.items() if at < older_than]
            for tid in old:
                self._store.results.pop(tid, None)
                del self._store.done_at[tid]
        return len(old)

    async def chord_start(self, group_id: str, size: int) -> None:
        self._store.chords.start(group_id, size)

    async def _join_part(self, part: ChordPart, claim_seconds: float) -> ChordJoin | None:
        return self._store.chords.part_done(part, claim_seconds)

    async def chord_done(self, group_id: str, claim: str) -> bool:
        return self._store.chords.done(group_id, claim)

    async def chord_body_run(self, group_id: str, send: str) -> bool:
        return self._store.chords.body_run(group_id, send)
