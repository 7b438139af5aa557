"""The beat store of the SQLite broker: three tables in the broker's own file.

The lease is a row (holder, expiry by the wall clock, which every process on the machine shares);
taking it, and every fenced write, is one ``BEGIN IMMEDIATE`` transaction that checks the lease
row first, so no two processes can both believe they hold it when they write. The sqlite3 calls
run on a thread of their own, as the broker's do.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from conveyor.beat.store import BeatStore, Controls, EntryState, Fire, decode_state, encode_state
from conveyor.transports.sqlite import database_path
from conveyor.transports.sqlite.database import Database, read_transaction, write_transaction

__all__ = ["SQLiteBeatStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS beat_leases (
    beat TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS beat_entries (
    beat TEXT NOT NULL, entry TEXT NOT NULL, state BLOB NOT NULL, PRIMARY KEY (beat, entry)
);
CREATE TABLE IF NOT EXISTS beat_controls (
    beat TEXT NOT NULL,
    entry TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    triggers INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (beat, entry)
);
"""


def _create_tables(db: sqlite3.Connection) -> None:
    # statement by statement: executescript would commit the surrounding transaction
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


class SQLiteBeatStore(BeatStore):
    """Lease and states in the broker file that ``url`` names."""

    def __init__(self, url: str, beat: str, *, lease: float) -> None:
        self.beat = beat
        self.lease = lease
        self._database = Database(database_path(url), what="SQLite broker (beat store)")

    async def open(self) -> None:
        """Open the broker file as the broker opens it (a file of another application is
        refused untouched) and add the beat's tables (idempotent)."""
        if not self._database.is_open:
            await self._database.open()
            await self._transaction(_create_tables)

    async def close(self) -> None:
        await self._database.close()

    async def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        return await self._database.run(write_transaction(body))

    def _leads(self, db: sqlite3.Connection, holder: str) -> bool:
        row = db.execute(
            "SELECT holder, expires_at FROM beat_leases WHERE beat = ?", (self.beat,)
        ).fetchone()
        return row is not None and row[0] == holder and row[1] > time.time()

    async def hold(self, holder: str) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            now = time.time()
            row = db.execute(
                "SELECT holder, expires_at FROM beat_leases WHERE beat = ?", (self.beat,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO beat_leases (beat, holder, expires_at) VALUES (?, ?, ?)",
                (self.beat, holder, now + self.lease),
            )
            return True

        return await self._transaction(body)

    async def release(self, holder: str) -> None:
        def body(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM beat_leases WHERE beat = ? AND holder = ?", (self.beat, holder))

        await self._transaction(body)

    async def load(self) -> dict[str, EntryState]:
        def read(db: sqlite3.Connection) -> dict[str, EntryState]:
            rows = db.execute(
                "SELECT entry, state FROM beat_entries WHERE beat = ?", (self.beat,)
            ).fetchall()
            return {entry: decode_state(state) for entry, state in rows}

        return await self._database.run(read_transaction(read))

    async def _write(self, holder: str, states: Sequence[tuple[str, EntryState]]) -> bool:
        rows = [(self.beat, name, encode_state(state)) for name, state in states]

        def body(db: sqlite3.Connection) -> bool:
            if not self._leads(db, holder):
                return False
            db.executemany(
                "INSERT OR REPLACE INTO beat_entries (beat, entry, state) VALUES (?, ?, ?)", rows
            )
            return True

        return await self._transaction(body)

    async def claim(self, holder: str, fires: Sequence[Fire]) -> bool:
        return await self._write(holder, [(f.entry, f.claimed()) for f in fires])

    async def confirm(self, holder: str, fires: Sequence[Fire]) -> bool:
        return await self._write(holder, [(f.entry, f.state(confirmed=True)) for f in fires])

    async def forget(self, holder: str, entries: Iterable[str]) -> None:
        rows = [(self.beat, name) for name in entries]

        def body(db: sqlite3.Connection) -> None:
            if self._leads(db, holder):
                db.executemany("DELETE FROM beat_entries WHERE beat = ? AND entry = ?", rows)

        await self._transaction(body)

    async def _control(self, entry: str, column: str, value: str) -> None:
        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR IGNORE INTO beat_controls (beat, entry) VALUES (?, ?)",
                (self.beat, entry),
            )
            db.execute(
                f"UPDATE beat_controls SET {column} = {value} WHERE beat = ? AND entry = ?",
                (self.beat, entry),
            )

        await self._transaction(body)

    async def set_paused(self, entry: str, paused: bool) -> None:
        await self._control(entry, "paused", "1" if paused else "0")

    async def request_trigger(self, entry: str) -> None:
        await self._control(entry, "triggers", "triggers + 1")

    async def take_controls(self, holder: str) -> Controls:
        def body(db: sqlite3.Connection) -> Controls:
            rows = db.execute(
                "SELECT entry, paused, triggers FROM beat_controls WHERE beat = ?", (self.beat,)
            ).fetchall()
            triggers: list[str] = []
            if self._leads(db, holder):
                for entry, _, count in rows:
                    triggers.extend([entry] * count)
                if triggers:
                    db.execute("UPDATE beat_controls SET triggers = 0 WHERE beat = ?", (self.beat,))
            return Controls(frozenset(e for e, paused, _ in rows if paused), tuple(triggers))

        return await self._transaction(body)
