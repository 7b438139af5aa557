"""A full disk under the SQLite broker and result store is waited out, not fatal (issue 15,
item 6): the worker keeps running, a client's send waits instead of failing, and once there is
space again everything sent runs and every result is stored.

The disk is a small tmpfs mounted for the test (it needs the right to mount: root in the
test container); where mounting is not allowed the test is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.app import App
from tests.faults.conftest import StartWorker

BIG = 300_000  # bytes per argument and per result: more than any reusable WAL space


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB tmpfs at ``tmp_path/disk``, unmounted at the end."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a full disk: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; return it."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        for size in (4096, 512, 1):  # the last pieces a big chunk did not fit in
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


async def test_a_full_disk_is_waited_out_by_worker_and_client(
    small_disk: Path,
    tmp_path: Path,
    client_of: Callable[..., App],
    start_worker: StartWorker,
) -> None:
    broker = f"sqlite://{small_disk}/broker.db?lease=1&poll_interval=0.2"
    backend = f"sqlite://{small_disk}/results.db"
    client = client_of(broker, backend)
    ran = tmp_path / "ran.txt"
    worker = start_worker(broker, "-c", "1", backend=backend)
    first = await client.asend_task("faults.echo", ["before", str(ran), "x"])
    assert await first.aget(timeout=30) == "x"

    filler = fill(small_disk)
    sends = [
        asyncio.ensure_future(
            client.asend_task("faults.echo", [f"during-{i}", str(ran), str(i) * BIG])
        )
        for i in range(3)
    ]
    await asyncio.sleep(3)
    assert worker.alive(), worker.output()
    assert not all(s.done() for s in sends), "every send of 300 KB went into a full disk"
    for send in sends:
        if send.done():
            send.result()  # a send that finished must have succeeded, not failed

    filler.unlink()
    results = [await send for send in sends]
    values = [await r.aget(timeout=60) for r in results]
    assert values == [str(i) * BIG for i in range(3)]
    assert sorted(ran.read_text().split()) == ["before", "during-0", "during-1", "during-2"]
    assert worker.alive(), worker.output()
    # the worker met the full disk too, said so once per file (broker, results), carried on
    log = worker.output()
    assert 1 <= log.count("the disk is full") <= 2, log
    assert "has space again" in log
