"""``GroupResult``: the results of a group's members, read together.

``get`` returns the members' values in the order the group gave them; ``collect`` yields
``(result, value)`` pairs as they land; ``completed_count`` and ``ready`` look without waiting.
Members may themselves be groups (a GroupResult inside a GroupResult). Every method has an
async twin with the ``a`` prefix; the sync ones run it on the sync API's private event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.results.async_result import AsyncResult
from conveyor.sync_loop import SYNC_LOOP

if TYPE_CHECKING:
    from conveyor.results.async_result import ResultSource
    from conveyor.results.base import ResultBackend

__all__ = ["GroupResult"]

T = TypeVar("T")
_WAIT_BATCH = 500  # members waited for at once


class GroupResult:
    """The results of group ``id``'s members (``results``), in the order given."""

    def __init__(
        self,
        id: str,
        results: Sequence[AsyncResult | GroupResult],
        *,
        app: ResultSource | None = None,
        backend: ResultBackend | None = None,
    ) -> None:
        self.id = id
        self.results: list[AsyncResult | GroupResult] = list(results)
        self.app = app
        self._backend = backend

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{', '.join(str(r.id) for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult | GroupResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult | GroupResult:
        return self.results[index]

    @staticmethod
    def _sync(make: Coroutine[Any, Any, T]) -> T:
        return SYNC_LOOP.run(lambda: make)

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Wait for every member and return their values in the order given.

        With ``propagate`` (the default) the first failed member's error (in order) is raised;
        otherwise errors take their members' places. ResultTimeout when ``timeout`` seconds
        pass before every member is ready.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        values: list[Any] = []
        members = self.results
        for start in range(0, len(members), _WAIT_BATCH):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            batch = members[start : start + _WAIT_BATCH]
            values.extend(await asyncio.gather(*(_value(m, left) for m in batch)))
        if propagate:
            error = _first_error(values)
            if error is not None:
                raise error
        return values

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Sync twin of :meth:`aget`."""
        return self._sync(self.aget(timeout, propagate=propagate))

    join = get

    async def acollect(
        self, timeout: float | None = None
    ) -> AsyncIterator[tuple[AsyncResult | GroupResult, Any]]:
        """``(member, value)`` for each member as it becomes ready, first ready first; a failed
        member's value is its error (nothing is raised but ResultTimeout after ``timeout``)."""
        loop = asyncio.get_running_loop()

        async def landed(
            member: AsyncResult | GroupResult,
        ) -> tuple[AsyncResult | GroupResult, Any]:
            return member, await member.aget(timeout, propagate=False)

        waits = [loop.create_task(landed(member)) for member in self.results]
        try:
            for next_done in asyncio.as_completed(waits):
                yield await next_done
        finally:
            for task in waits:
                task.cancel()

    def collect(self, timeout: float | None = None) -> list[tuple[AsyncResult | GroupResult, Any]]:
        """Sync twin of :meth:`acollect`: the pairs in the order the members became ready."""

        async def gather() -> list[tuple[AsyncResult | GroupResult, Any]]:
            return [pair async for pair in self.acollect(timeout)]

        return self._sync(gather())

    async def acompleted_count(self) -> int:
        """How many members finished successfully (a group member when all of its did)."""
        count = 0
        for member in self.results:
            if isinstance(member, GroupResult):
                count += int(await member.asuccessful())
            else:
                count += int(await member.astate() == "SUCCESS")
        return count

    def completed_count(self) -> int:
        """Sync twin of :meth:`acompleted_count`."""
        return self._sync(self.acompleted_count())

    async def aready(self) -> bool:
        """Whether every member finished (SUCCESS, FAILURE or REVOKED)."""
        for member in self.results:
            if not await member.aready():
                return False
        return True

    def ready(self) -> bool:
        """Sync twin of :meth:`aready`."""
        return self._sync(self.aready())

    async def asuccessful(self) -> bool:
        """Whether every member finished successfully."""
        return await self.acompleted_count() == len(self.results)

    def successful(self) -> bool:
        """Sync twin of :meth:`asuccessful`."""
        return self._sync(self.asuccessful())

    async def afailed(self) -> bool:
        """Whether any member failed."""
        for member in self.results:
            if isinstance(member, GroupResult):
                if await member.afailed():
                    return True
            elif await member.astate() == "FAILURE":
                return True
        return False

    def failed(self) -> bool:
        """Sync twin of :meth:`afailed`."""
        return self._sync(self.afailed())


def _first_error(values: list[Any]) -> BaseException | None:
    """The first error among ``values`` (nested groups' lists included), in order."""
    for value in values:
        if isinstance(value, BaseException):
            return value
        if isinstance(value, list):
            nested = _first_error(value)
            if nested is not None:
                return nested
    return None


async def _value(member: AsyncResult | GroupResult, timeout: float | None) -> Any:
    """A member's value (its error in place), read at once when it is ready: most are by the
    time a big group's results are read, and a read costs less than a wait."""
    if isinstance(member, AsyncResult):
        await member.aready()  # a ready result is kept: aget returns it without waiting
    return await member.aget(timeout, propagate=False)
