"""The broker file's schema: its tables, its version, and how a file is recognized as conveyor's.

A file is conveyor's when ``PRAGMA application_id`` says so (``CVYB``) and its ``meta`` table
holds a ``schema_version`` this conveyor knows. An empty file gets the schema; any other file is
refused untouched (ConfigurationError), so that a mistyped URL never writes into another
application's database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conveyor.errors import ConfigurationError

__all__ = [
    "APPLICATION_ID",
    "MESSAGE_COLUMNS",
    "SCHEMA_VERSION",
    "check_identity",
    "create_schema",
]

SCHEMA_VERSION = 1
# PRAGMA application_id marks the file as conveyor's broker ("CVYB").
APPLICATION_ID = 0x43565942

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (name TEXT PRIMARY KEY, definition BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    definition BLOB NOT NULL,
    owner TEXT,
    max_length INTEGER,
    used_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    exchange TEXT NOT NULL,
    queue TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    arguments BLOB NOT NULL,
    PRIMARY KEY (exchange, queue, routing_key, arguments)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    not_before REAL,
    expires_at REAL,
    lease TEXT,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, priority DESC, id)
    WHERE lease IS NULL AND not_before IS NULL;
CREATE INDEX IF NOT EXISTS messages_delayed ON messages (queue, not_before)
    WHERE not_before IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_expiring ON messages (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_leased ON messages (lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS connections (
    id TEXT PRIMARY KEY,
    deadline REAL NOT NULL,
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consumers (
    connection TEXT NOT NULL,
    tag TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (connection, tag, queue)
);
CREATE INDEX IF NOT EXISTS consumers_queue ON consumers (queue);
"""

# the columns a stored message is read back from, in the order codec.stored_message takes them
MESSAGE_COLUMNS = "id, queue, priority, delivery_count, expires_at, exchange, routing_key, envelope"


def check_identity(db: sqlite3.Connection, path: Path) -> int:
    """The schema version of the file (0 for an empty file); ConfigurationError for a file
    that is another application's or of a newer conveyor."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if app_id == 0 and not tables:
        return 0
    if app_id != APPLICATION_ID or "meta" not in tables:
        raise ConfigurationError(
            f"{path} is a SQLite database of another application, not a conveyor "
            "broker; it was left untouched: point the broker URL at another file"
        )
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"{path} was created by a newer conveyor (broker schema {version}, this "
            f"one knows up to {SCHEMA_VERSION}); it was left untouched: upgrade conveyor"
        )
    if version < 1:
        raise ConfigurationError(f"{path} has no conveyor schema version; it was left untouched")
    return version


def create_schema(db: sqlite3.Connection) -> None:
    """Create the tables and mark the file as conveyor's; inside the caller's transaction."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?), "
        "('topology_version', 0)",
        (SCHEMA_VERSION,),
    )
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
