"""Where beat keeps its leader lease and each entry's state: one interface, one store per broker.

The lease says which beat process sends; the per-entry state says which due time was sent last.
Both live in the broker's own storage (a table in the SQLite file, keys in Redis, queues on
RabbitMQ), so any number of beat processes pointed at one broker agree on them.

The contract every store keeps:

- :meth:`BeatStore.hold` takes the lease if free or lapsed, renews it if ``holder`` has it, and
  answers whether ``holder`` holds it. A holder that stops renewing loses it after ``lease``
  seconds (on RabbitMQ, as soon as its connection closes).
- :meth:`BeatStore.claim` and :meth:`BeatStore.confirm` write entry states only while
  ``holder`` holds the lease, checked in the same atomic step as the write (a fenced write):
  a process that lost the lease without knowing it writes nothing.
- ``set_paused`` and ``request_trigger`` may be called by any process at any time; the
  leader reads them with ``take_controls``, which hands each trigger request out once.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

__all__ = ["BeatStore", "Controls", "EntryState", "Fire", "decode_state", "encode_state"]


@dataclass(frozen=True, slots=True)
class EntryState:
    """What the store knows of one entry.

    ``last_due``: the latest due time claimed for sending, with its ``task_id``; ``confirmed``:
    the broker took that message (False: the claiming leader may have died before or after
    sending it). ``signature``: the entry's schedule when claimed (see ``Entry.signature``).
    """

    last_due: datetime | None
    task_id: str | None
    confirmed: bool
    signature: str | None


@dataclass(frozen=True, slots=True)
class Fire:
    """One due time of one entry, claimed for sending under ``task_id``.

    ``sent`` False marks a due time passed over (overlap policy) rather than sent.
    """

    entry: str
    due: datetime
    task_id: str
    signature: str
    sent: bool = True

    def state(self, *, confirmed: bool) -> EntryState:
        """The entry's state once this fire is claimed (or confirmed)."""
        return EntryState(self.due, self.task_id, confirmed, self.signature)

    def claimed(self) -> EntryState:
        """The state :meth:`BeatStore.claim` records: unconfirmed, unless nothing is sent."""
        return self.state(confirmed=not self.sent)


@dataclass(frozen=True, slots=True)
class Controls:
    """What the command line asked of the leader: entries paused, entries to fire now."""

    paused: frozenset[str]
    triggers: tuple[str, ...]


def encode_state(state: EntryState) -> bytes:
    """An EntryState as compact JSON (times in ISO 8601 with their UTC offset)."""
    return orjson.dumps(
        {
            "due": state.last_due.isoformat() if state.last_due is not None else None,
            "task_id": state.task_id,
            "confirmed": state.confirmed,
            "signature": state.signature,
        }
    )


def decode_state(raw: bytes | str | Mapping[str, Any]) -> EntryState:
    """The EntryState :func:`encode_state` wrote."""
    data = raw if isinstance(raw, Mapping) else orjson.loads(raw)
    due = data.get("due")
    return EntryState(
        datetime.fromisoformat(due) if due else None,
        data.get("task_id"),
        bool(data.get("confirmed")),
        data.get("signature"),
    )


class BeatStore(abc.ABC):
    """The lease and entry states of one beat (named ``beat``) in one broker."""

    beat: str
    lease: float

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (idempotent). BrokerUnavailable if the broker cannot be reached."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect (idempotent); a held lease is not released (see :meth:`release`)."""

    @abc.abstractmethod
    async def hold(self, holder: str) -> bool:
        """Take or renew the lease for ``holder``; True if ``holder`` holds it now."""

    @abc.abstractmethod
    async def release(self, holder: str) -> None:
        """Give the lease up if ``holder`` holds it, so a successor need not wait it out."""

    @abc.abstractmethod
    async def load(self) -> dict[str, EntryState]:
        """Every entry's state, by entry name."""

    @abc.abstractmethod
    async def claim(self, holder: str, fires: Sequence[Fire]) -> bool:
        """Record ``fires`` as claimed (unconfirmed), all or none, iff ``holder`` holds the
        lease; False (nothing written) otherwise."""

    @abc.abstractmethod
    async def confirm(self, holder: str, fires: Sequence[Fire]) -> bool:
        """Record ``fires`` as confirmed sent, iff ``holder`` holds the lease."""

    @abc.abstractmethod
    async def forget(self, holder: str, entries: Iterable[str]) -> None:
        """Drop the state of ``entries`` (removed from the schedule), iff ``holder`` leads."""

    @abc.abstractmethod
    async def set_paused(self, entry: str, paused: bool) -> None:
        """Pause or resume ``entry``. Idempotent. Any process."""

    @abc.abstractmethod
    async def request_trigger(self, entry: str) -> None:
        """Ask the leader to send ``entry`` once now. Any process."""

    @abc.abstractmethod
    async def take_controls(self, holder: str) -> Controls:
        """The paused entries and the trigger requests made since the last call (each handed
        out once). Only the leader calls this."""
