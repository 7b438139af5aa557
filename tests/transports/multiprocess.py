"""Scenarios of several OS processes sharing one broker (a SQLite file, a Redis), some of them
SIGKILLed. The processes run the roles in ``processes.py``; each shared transport's tests call
these with its URL and the ``processes`` fixture's list (killed at the end of the test)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from conveyor import NotFound, PreconditionFailed, Queue
from conveyor.transports import open_transport

from .helpers import bodies, drain, env

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.transports.processes ARGS...`` from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.transports.processes", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def exists(path: Path) -> bool:
    return path.exists()


async def wait_for(path: Path, timeout: float = 30.0) -> None:
    """Wait until ``path`` exists, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout}s")
        await asyncio.sleep(0.02)


def lines(path: Path) -> list[str]:
    """The non-empty lines of a process's log file ([] before it exists)."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


def unacked(logs: Path, name: str) -> set[str]:
    """What consumer ``name`` was delivered and had not begun to ack (see ``processes.py``)."""
    return set(lines(logs / f"{name}.delivered")) - set(lines(logs / f"{name}.acking"))


async def a_killed_consumers_messages_come_back_redelivered(
    url: str, logs: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A process holding 3 of 5 messages unacked and an exclusive queue is SIGKILLed: the 3
    come back redelivered (count 2) and the exclusive queue is deleted."""
    async with open_transport(url) as t:
        await t.declare_queue(Queue("jobs"))
        for i in range(5):
            await t.publish(env(str(i)), routing_key="jobs")
        holder = spawn("hold", url, "jobs", str(logs), "holder", "1.0")
        processes.append(holder)
        await wait_for(logs / "holder.ready")
        assert (await t.queue_stats("jobs")).unacked == 3
        with pytest.raises(PreconditionFailed):
            await t.get("jobs.exclusive")
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while (await t.queue_stats("jobs")).unacked:
            assert time.monotonic() < deadline, "the killed consumer's messages never came back"
            await asyncio.sleep(0.05)
        back = await drain(t, "jobs")
        assert sorted(bodies(back)) == ["0", "1", "2", "3", "4"]
        assert {d.envelope.body.decode() for d in back if d.redelivered} == {"0", "1", "2"}
        assert {d.delivery_count for d in back if d.redelivered} == {2}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                await t.queue_stats("jobs.exclusive")
            except NotFound:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the dead process's exclusive queue was not deleted")


async def a_sigkill_loses_nothing(
    url: str,
    logs: Path,
    processes: list[subprocess.Popen[bytes]],
    *,
    victim: Sequence[str],
    victim_busy: Callable[[Path], bool],
) -> None:
    """Three consumers and two producers share a queue; the consumer started with the role
    arguments ``victim`` is SIGKILLed once ``victim_busy(logs)``, with one producer. Every
    confirmed message is delivered, none acked twice, the victim's unacked ones redelivered."""
    async with open_transport(url) as t:
        await t.declare_queue(Queue("jobs"))
    role, *extra = victim
    consumers = {
        "victim": spawn(role, url, "jobs", str(logs), "victim", *extra),
        "c1": spawn("consume", url, "jobs", str(logs), "c1", "1.0"),
        "c2": spawn("consume", url, "jobs", str(logs), "c2", "1.0"),
    }
    processes.extend(consumers.values())
    for name in consumers:
        await wait_for(logs / f"{name}.ready")
    steady = spawn("produce", url, "jobs", str(logs), "steady", "600")
    doomed = spawn("produce", url, "jobs", str(logs), "doomed", "100000")
    processes.extend([steady, doomed])

    deadline = time.monotonic() + 60
    while not victim_busy(logs) or len(lines(logs / "doomed.published")) < 300:
        assert time.monotonic() < deadline, "the processes made no progress"
        await asyncio.sleep(0.01)
    consumers["victim"].send_signal(signal.SIGKILL)
    doomed.send_signal(signal.SIGKILL)
    assert steady.wait(60) == 0
    consumers["victim"].wait(10)
    doomed.wait(10)

    async with open_transport(url) as t:
        deadline = time.monotonic() + 30
        while True:
            stats = await t.queue_stats("jobs")
            if stats.ready == 0 and stats.unacked == 0:
                break
            assert time.monotonic() < deadline, f"messages were left behind: {stats}"
            await asyncio.sleep(0.05)
    for name in ("c1", "c2"):
        consumers[name].send_signal(signal.SIGTERM)
        assert consumers[name].wait(30) == 0

    confirmed = set(lines(logs / "steady.published")) | set(lines(logs / "doomed.published"))
    assert len(lines(logs / "steady.published")) == 600
    delivered = {x for n in consumers for x in lines(logs / f"{n}.delivered")}
    assert confirmed <= delivered, f"lost: {sorted(confirmed - delivered)[:10]}"
    survivors_acked = lines(logs / "c1.acked") + lines(logs / "c2.acked")
    assert len(survivors_acked) == len(set(survivors_acked)), "a message was acked twice"
    victim_acked = set(lines(logs / "victim.acked"))
    assert not victim_acked & set(survivors_acked), "an acked message was delivered again"
    unaccounted = delivered - set(survivors_acked) - set(lines(logs / "victim.acking"))
    assert not unaccounted, f"never acked: {sorted(unaccounted)[:10]}"
    victim_unacked = unacked(logs, "victim")
    assert victim_unacked, "the victim was killed holding nothing: the test proved nothing"
    assert victim_unacked <= set(survivors_acked)
