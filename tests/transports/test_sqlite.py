"""SQLite transport specifics: URLs, the file it owns, and several OS processes sharing it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import ConfigurationError, NotFound, PreconditionFailed, Queue
from conveyor.transports import open_transport
from conveyor.transports.sqlite import (
    DEFAULT_DATABASE_NAME,
    SCHEMA_VERSION,
    database_path,
    default_broker_url,
)

from .helpers import bodies, drain, env

ROOT = Path(__file__).resolve().parents[2]


def _exists(path: Path) -> bool:
    return path.exists()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/data/broker.db", "/var/data/broker.db"),
        ("sqlite:////var/data/broker.db", "/var/data/broker.db"),
        ("sqlite://data/broker.db", "data/broker.db"),
        ("sqlite:broker.db", "broker.db"),
        ("sqlite:///tmp/with%20space.db", "/tmp/with space.db"),
    ],
)
def test_url_names_the_database_file(url: str, expected: str) -> None:
    assert database_path(url) == Path(expected).absolute()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///var/data/",
        "sqlite:///:memory:",
        "sqlite:///tmp/b.db?lease=soon",
        "sqlite:///tmp/b.db?lease=0",
        "sqlite:///tmp/b.db?bogus=1",
        "sqlite:///tmp/b.db?synchronous=sometimes",
    ],
)
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_transport(url)


def test_default_url_is_a_file_in_the_working_directory(tmp_path: Path) -> None:
    url = default_broker_url(tmp_path)
    assert database_path(url) == tmp_path / DEFAULT_DATABASE_NAME
    assert database_path(default_broker_url()) == Path.cwd() / DEFAULT_DATABASE_NAME


async def test_unusable_paths_are_clear_errors(tmp_path: Path) -> None:
    missing = open_transport(f"sqlite://{tmp_path / 'no' / 'such' / 'dir' / 'b.db'}")
    with pytest.raises(ConfigurationError, match="does not exist"):
        await missing.connect()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    under_file = open_transport(f"sqlite://{a_file / 'b.db'}")
    with pytest.raises(ConfigurationError, match="not a directory"):
        await under_file.connect()
    a_dir = tmp_path / "dir.db"
    a_dir.mkdir()
    with pytest.raises(ConfigurationError, match="is a directory"):
        await open_transport(f"sqlite://{a_dir}").connect()


async def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = _digest(path)
    with pytest.raises(ConfigurationError, match="not a conveyor broker"):
        await open_transport(f"sqlite://{path}").connect()
    assert _digest(path) == before


async def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('ada')")
    db.close()
    before = _digest(path)
    with pytest.raises(ConfigurationError, match="another application"):
        await open_transport(f"sqlite://{path}").connect()
    assert _digest(path) == before
    assert not _exists(Path(f"{path}-wal"))


async def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    async with open_transport(f"sqlite://{path}") as t:
        await t.declare_queue(Queue("kept"))
        await t.publish(env("precious"), routing_key="kept")
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    before = _digest(path)
    with pytest.raises(ConfigurationError, match="newer conveyor"):
        await open_transport(f"sqlite://{path}").connect()
    assert _digest(path) == before


async def test_the_file_is_wal_with_a_versioned_schema_and_messages_persist(
    tmp_path: Path,
) -> None:
    path = tmp_path / "broker.db"
    async with open_transport(f"sqlite://{path}") as t:
        await t.declare_queue(Queue("q", max_priority=3))
        await t.publish(env("low", priority=1), routing_key="q")
        await t.publish(env("high", priority=3), routing_key="q")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == (
        SCHEMA_VERSION
    )
    db.close()
    async with open_transport(f"sqlite://{path}") as t:
        assert bodies(await drain(t, "q")) == ["high", "low"]


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.transports.sqlite_processes", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not _exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout}s")
        await asyncio.sleep(0.02)


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


async def test_a_killed_consumers_messages_come_back_redelivered(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite://{tmp_path / 'broker.db'}"
    async with open_transport(url) as t:
        await t.declare_queue(Queue("jobs"))
        for i in range(5):
            await t.publish(env(str(i)), routing_key="jobs")
        holder = _spawn("hold", url, "jobs", str(tmp_path), "holder", "1.0")
        processes.append(holder)
        await _wait_for(tmp_path / "holder.ready")
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


async def test_processes_share_the_file_and_a_sigkill_loses_nothing(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite://{tmp_path / 'broker.db'}"
    async with open_transport(url) as t:
        await t.declare_queue(Queue("jobs"))
    logs = tmp_path
    consumers = {
        "victim": _spawn("consume-then-hold", url, "jobs", str(logs), "victim", "40"),
        "c1": _spawn("consume", url, "jobs", str(logs), "c1", "1.0"),
        "c2": _spawn("consume", url, "jobs", str(logs), "c2", "1.0"),
    }
    processes.extend(consumers.values())
    for name in consumers:
        await _wait_for(logs / f"{name}.ready")
    steady = _spawn("produce", url, "jobs", str(logs), "steady", "600")
    doomed = _spawn("produce", url, "jobs", str(logs), "doomed", "100000")
    processes.extend([steady, doomed])

    deadline = time.monotonic() + 60
    while not _exists(logs / "victim.holding") or len(_lines(logs / "doomed.published")) < 300:
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

    confirmed = set(_lines(logs / "steady.published")) | set(_lines(logs / "doomed.published"))
    assert len(_lines(logs / "steady.published")) == 600
    delivered = {x for n in consumers for x in _lines(logs / f"{n}.delivered")}
    assert confirmed <= delivered, f"lost: {sorted(confirmed - delivered)[:10]}"
    survivors_acked = _lines(logs / "c1.acked") + _lines(logs / "c2.acked")
    assert len(survivors_acked) == len(set(survivors_acked)), "a message was acked twice"
    victim_acked = set(_lines(logs / "victim.acked"))
    assert not victim_acked & set(survivors_acked), "an acked message was delivered again"
    victim_maybe = set(_lines(logs / "victim.acking"))
    unaccounted = delivered - set(survivors_acked) - victim_maybe
    assert not unaccounted, f"never acked: {sorted(unaccounted)[:10]}"
    victim_unacked = set(_lines(logs / "victim.delivered")) - victim_maybe
    assert victim_unacked, "the victim was killed holding nothing: the test proved nothing"
    assert victim_unacked <= set(survivors_acked)


async def test_a_live_consumer_keeps_its_deliveries_past_the_lease(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'broker.db'}"
    async with (
        open_transport(url, {"lease": 0.4}) as holder,
        open_transport(url, {"lease": 0.4}) as other,
    ):
        await holder.declare_queue(Queue("jobs"))
        await holder.publish(env("mine"), routing_key="jobs")
        held = await holder.get("jobs")
        assert held is not None
        await asyncio.sleep(1.2)  # three leases: renewals keep it
        assert await other.get("jobs") is None
        assert (await other.queue_stats("jobs")).unacked == 1
        await holder.ack_many([held])  # durable on return (ack alone is batched)
        stats = await other.queue_stats("jobs")
        assert (stats.ready, stats.unacked) == (0, 0)
