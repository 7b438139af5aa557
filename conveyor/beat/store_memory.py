"""The beat store of a ``memory://`` broker: one process, shared by the beats in it by URL."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from conveyor.beat.store import BeatStore, Controls, EntryState, Fire

__all__ = ["MemoryBeatStore"]


@dataclass
class _Shared:
    holder: str | None = None
    expires_at: float = 0.0
    states: dict[str, EntryState] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    triggers: list[str] = field(default_factory=list)


_SHARED: dict[tuple[str, str], _Shared] = {}


class MemoryBeatStore(BeatStore):
    """Lease and state in a dict shared by every store of the same URL and beat name."""

    def __init__(self, url: str, beat: str, *, lease: float) -> None:
        self.beat = beat
        self.lease = lease
        self._shared = _SHARED.setdefault((url.split("?", 1)[0], beat), _Shared())

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _leads(self, holder: str) -> bool:
        shared = self._shared
        return shared.holder == holder and shared.expires_at > time.monotonic()

    async def hold(self, holder: str) -> bool:
        shared = self._shared
        now = time.monotonic()
        if shared.holder in (None, holder) or shared.expires_at <= now:
            shared.holder, shared.expires_at = holder, now + self.lease
            return True
        return False

    async def release(self, holder: str) -> None:
        if self._shared.holder == holder:
            self._shared.holder = None

    async def load(self) -> dict[str, EntryState]:
        return dict(self._shared.states)

    async def claim(self, holder: str, fires: Sequence[Fire]) -> bool:
        if not self._leads(holder):
            return False
        for fire in fires:
            self._shared.states[fire.entry] = fire.claimed()
        return True

    async def confirm(self, holder: str, fires: Sequence[Fire]) -> bool:
        if not self._leads(holder):
            return False
        for fire in fires:
            self._shared.states[fire.entry] = fire.state(confirmed=True)
        return True

    async def forget(self, holder: str, entries: Iterable[str]) -> None:
        if self._leads(holder):
            for name in entries:
                self._shared.states.pop(name, None)

    async def set_paused(self, entry: str, paused: bool) -> None:
        if paused:
            self._shared.paused.add(entry)
        else:
            self._shared.paused.discard(entry)

    async def request_trigger(self, entry: str) -> None:
        self._shared.triggers.append(entry)

    async def take_controls(self, holder: str) -> Controls:
        shared = self._shared
        triggers, shared.triggers = tuple(shared.triggers), []
        return Controls(frozenset(shared.paused), triggers)
