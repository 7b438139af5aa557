"""conveyor.lifecycle: what ``async with`` does, written once, and one instance per name."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conveyor.lifecycle import Connectable, PerName, Scoped


class Resource(Connectable):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def connect(self) -> None:
        self.calls.append("connect")

    async def close(self) -> None:
        self.calls.append("close")


class Subscription(Scoped):
    def __init__(self) -> None:
        self.cancelled = False

    async def _exit(self) -> None:
        self.cancelled = True


def test_async_with_connects_gives_the_object_and_closes_even_when_the_block_raises() -> None:
    resource = Resource()

    async def run() -> None:
        async with resource as entered:
            assert entered is resource
            assert resource.calls == ["connect"]
        with pytest.raises(KeyError):
            async with resource:
                raise KeyError("x")

    asyncio.run(run())
    assert resource.calls == ["connect", "close", "connect", "close"]


def test_a_scoped_object_does_nothing_on_entry_and_its_exit_on_leaving() -> None:
    subscription = Subscription()

    async def run() -> None:
        async with subscription as entered:
            assert entered is subscription
            assert not subscription.cancelled

    asyncio.run(run())
    assert subscription.cancelled


def test_per_name_makes_one_instance_per_name_even_when_threads_race() -> None:
    made: list[str] = []

    def make(name: str) -> object:
        made.append(name)
        return object()

    per_name = PerName(make)
    got: list[object] = []
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        got.append(per_name("a"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == ["a"]
    assert all(instance is got[0] for instance in got)
    assert per_name("b") is not got[0]
    assert per_name.names() == ["a", "b"]
