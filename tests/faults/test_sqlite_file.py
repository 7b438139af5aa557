"""The SQLite broker file: created for its owner only, and never written to once it is no longer
the file at its path (issue 15, items 5 and 7's file mode)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Queue
from conveyor.transports.sqlite import SQLiteTransport
from conveyor.transports.sqlite.file_faults import FileMoved
from tests.faults.conftest import StartWorker, wait_until


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("option", "expected"), [("", 0o600), ("&file_mode=0640", 0o640)])
async def test_a_new_broker_file_and_its_wal_and_shm_are_private(
    tmp_path: Path, option: str, expected: int
) -> None:
    db = tmp_path / "broker.db"
    old_umask = os.umask(0o022)
    try:
        async with SQLiteTransport.from_url(f"sqlite://{db}?lease=1{option}") as transport:
            await transport.declare_queue(Queue("q"))
            await transport.publish(Envelope(b"secret"), routing_key="q")
            companions = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert [mode(p) for p in companions] == [expected] * 3
    finally:
        os.umask(old_umask)


async def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    async with SQLiteTransport.from_url(f"sqlite://{db}"):
        pass
    db.chmod(0o644)
    async with SQLiteTransport.from_url(f"sqlite://{db}"):
        assert mode(db) == 0o644


@pytest.mark.parametrize("bad", ["rw", "0400", "01777", "9"])
def test_a_file_mode_that_is_no_mode_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError, match="file_mode"):
        SQLiteTransport.from_url(f"sqlite://{tmp_path}/b.db?file_mode={bad}")


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_client_stops_confirming_once_its_file_is_gone(tmp_path: Path, how: str) -> None:
    db = tmp_path / "broker.db"
    async with SQLiteTransport.from_url(f"sqlite://{db}?lease=1") as transport:
        await transport.declare_queue(Queue("q"))
        await transport.publish(Envelope(b"1"), routing_key="q")
        if how == "deleted":
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                path.unlink()
        else:
            other = tmp_path / "other.db"
            async with SQLiteTransport.from_url(f"sqlite://{other}"):
                pass
            other.replace(db)
        with pytest.raises(FileMoved, match=f"was {how}"):
            await transport.publish(Envelope(b"2"), routing_key="q")
        with pytest.raises(FileMoved):
            await transport.get("q")


async def test_a_worker_exits_non_zero_saying_its_file_was_deleted(
    tmp_path: Path, client_of: Callable[[str], App], start_worker: StartWorker, queue_name: str
) -> None:
    db = tmp_path / "broker.db"
    url = f"sqlite://{db}?lease=1&poll_interval=0.2"
    client = client_of(url)
    ran = tmp_path / "ran.txt"
    worker = start_worker(url, "-c", "1")
    await client.asend_task("faults.record", ["before", str(ran)])
    await wait_until(ran.exists, 30, lambda: f"the task did not run:\n{worker.output()}")
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink()
    await wait_until(lambda: not worker.alive(), 20, worker.output)
    assert worker.proc.returncode != 0
    assert f"{db} was deleted while this process had it open" in worker.output()
    # the client learns it on its next send, and nothing is confirmed into the deleted file
    with pytest.raises(FileMoved):
        await client.asend_task("faults.record", ["after", str(ran)])
    assert ran.read_text().split() == ["before"]
