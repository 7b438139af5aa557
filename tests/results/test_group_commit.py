"""GroupCommit: stores that arrive while a batch is written go together in the next batch."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.results.group_commit import GroupCommit


async def test_callers_arriving_during_a_write_share_the_next_batch() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def write(items: list[int]) -> None:
        batches.append(items)
        if len(batches) == 1:
            await release.wait()

    commit: GroupCommit[int] = GroupCommit(write)
    first = asyncio.ensure_future(commit.submit([1]))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(commit.submit([n])) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *later)
    assert batches == [[1], [2, 3, 4]]


async def test_a_failed_batch_fails_its_own_callers_only() -> None:
    async def write(items: list[int]) -> None:
        if 13 in items:
            raise OSError("disk said no")

    commit: GroupCommit[int] = GroupCommit(write)
    with pytest.raises(OSError, match="disk said no"):
        await commit.submit([13])
    await commit.submit([14])  # the next batch is written as if nothing happened
