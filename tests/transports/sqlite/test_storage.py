"""SQLite transport specifics: URLs, the file it owns, and several OS processes sharing it."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigurationError, Queue
from conveyor.transports import open_transport
from conveyor.transports.sqlite import (
    DEFAULT_DATABASE_NAME,
    SCHEMA_VERSION,
    database_path,
    default_broker_url,
)
from tests.transports.helpers import bodies, drain, env
from tests.transports.multiprocess import (
    a_killed_consumers_messages_come_back_redelivered,
    a_sigkill_loses_nothing,
    exists,
)


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
    assert not exists(Path(f"{path}-wal"))


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


async def test_a_killed_consumers_messages_come_back_redelivered(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite://{tmp_path / 'broker.db'}"
    await a_killed_consumers_messages_come_back_redelivered(url, tmp_path, processes)


async def test_processes_share_the_file_and_a_sigkill_loses_nothing(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    await a_sigkill_loses_nothing(
        f"sqlite://{tmp_path / 'broker.db'}",
        tmp_path,
        processes,
        victim=("consume-then-hold", "40"),  # kill it while it holds messages unacked
        victim_busy=lambda logs: exists(logs / "victim.holding"),
    )


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


def _open_fresh(path: str, ready: Any, errors: Any) -> None:
    """In a process of its own: open the broker file as soon as every opener is ready."""

    async def run() -> None:
        ready.wait()
        async with open_transport(f"sqlite://{path}"):
            pass

    try:
        asyncio.run(run())
    except Exception as exc:
        errors.put(repr(exc))


def test_processes_creating_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Openers racing the one that writes the schema see the file before or after, never a
    half-made schema taken for another application's database."""
    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        path = str(tmp_path / f"race-{attempt}.db")
        ready, errors = context.Event(), context.Queue()
        openers = [
            context.Process(target=_open_fresh, args=(path, ready, errors)) for _ in range(6)
        ]
        for opener in openers:
            opener.start()
        time.sleep(1.0)  # every process imported conveyor and waits
        ready.set()
        for opener in openers:
            opener.join(30)
        assert all(opener.exitcode == 0 for opener in openers)
        assert errors.empty(), errors.get()
