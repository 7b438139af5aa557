"""How conveyor's long-lived resources live: opened and closed around an ``async with``, and
shared process-wide by name.

- :class:`Scoped`: what ``async with`` does on entry and exit, written once.
- :class:`Connectable`: a resource with ``connect()`` and ``close()`` (a transport, a result
  backend) that ``async with`` opens on entry and closes on exit, however the block ends.
- :class:`PerName`: one instance per name for the whole process (the in-process broker behind
  ``memory://a``, the result store behind ``memory://a``), made on first use, under a lock so
  that two threads asking for a new name at once get the same one.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, Self, TypeVar

__all__ = ["Connectable", "PerName", "Scoped"]

T = TypeVar("T")


class Scoped(abc.ABC):
    """Something an ``async with`` brackets: :meth:`_enter` on the way in (nothing by default),
    :meth:`_exit` on the way out, whether or not the block raised (its exception is never
    swallowed). ``async with`` gives the object itself."""

    __slots__ = ()

    async def _enter(self) -> None:  # noqa: B027
        """What entering the block does; nothing unless a subclass says otherwise."""

    @abc.abstractmethod
    async def _exit(self) -> None:
        """What leaving the block does."""

    async def __aenter__(self) -> Self:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit()


class Connectable(Scoped):
    """A resource opened by ``connect()`` and released by ``close()``; ``async with`` does both.

    Subclasses state what connecting and closing mean for them (both idempotent).
    """

    __slots__ = ()

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open what the resource needs (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release it (idempotent)."""

    async def _enter(self) -> None:
        await self.connect()

    async def _exit(self) -> None:
        await self.close()


class PerName(Generic[T]):
    """One ``T`` per name in this process, made by ``make(name)`` the first time it is asked
    for and the same object afterwards; safe to call from any thread."""

    __slots__ = ("_instances", "_lock", "_make")

    def __init__(self, make: Callable[[str], T]) -> None:
        self._make = make
        self._instances: dict[str, T] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> T:
        """The instance named ``name``, made now if there is none yet."""
        with self._lock:
            instance = self._instances.get(name)
            if instance is None:
                instance = self._instances[name] = self._make(name)
            return instance

    def names(self) -> list[str]:
        """The names made so far, sorted."""
        with self._lock:
            return sorted(self._instances)
