"""Chord joins in the SQLite result file: two tables, each join step one write transaction.

``conveyor_chords`` holds a chord's size, its body-send claim (token and deadline) and whether
it is done; ``conveyor_chord_parts`` holds each finished header part once, keyed by chord, task
id and place (``INSERT OR IGNORE``: a redelivered task's second report changes nothing). The
rules are those of ``ResultBackend.chord_part_done``.
"""

from __future__ import annotations

import sqlite3
import time
import uuid

import orjson

from conveyor.results.base import ChordJoin, ChordPart

__all__ = [
    "CHORD_SCHEMA",
    "chord_body_run",
    "chord_done",
    "chord_part_done",
    "chord_start",
    "forget_chords",
]

CHORD_SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_chords (
    group_id TEXT PRIMARY KEY,
    size INTEGER,
    claim TEXT,
    claim_until REAL NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    body_send TEXT,
    started REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS conveyor_chord_parts (
    group_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    group_index INTEGER NOT NULL,
    state TEXT NOT NULL,
    result BLOB NOT NULL,
    PRIMARY KEY (group_id, task_id, group_index)
);
"""
_NO_INDEX = -1  # a part whose place is unknown (sorts last when read)


def chord_start(db: sqlite3.Connection, group_id: str, size: int) -> None:
    """Record the chord's size and forget an earlier run of it (inside a write transaction)."""
    db.execute(
        "INSERT INTO conveyor_chords (group_id, size, started) VALUES (?, ?, ?) "
        "ON CONFLICT (group_id) DO UPDATE SET size = excluded.size, claim = NULL, "
        "claim_until = 0, done = 0, body_send = NULL, started = excluded.started",
        (group_id, size, time.time()),
    )
    db.execute("DELETE FROM conveyor_chord_parts WHERE group_id = ?", (group_id,))


def chord_part_done(
    db: sqlite3.Connection, part: ChordPart, claim_seconds: float
) -> ChordJoin | None:
    """Count ``part``; the join and a claim for the one caller that completes the count
    (inside a write transaction)."""
    gid = part.group_id
    row = db.execute(
        "SELECT size, claim, claim_until, done FROM conveyor_chords WHERE group_id = ?", (gid,)
    ).fetchone()
    if row is not None and row[3]:
        return None
    index = _NO_INDEX if part.group_index is None else part.group_index
    db.execute(
        "INSERT OR IGNORE INTO conveyor_chord_parts "
        "(group_id, task_id, group_index, state, result) VALUES (?, ?, ?, ?, ?)",
        (gid, part.task_id, index, str(part.state), orjson.dumps(part.result)),
    )
    if row is None or row[0] is None:
        return None
    size, claim, claim_until = row[0], row[1], row[2]
    (count,) = db.execute(
        "SELECT COUNT(*) FROM conveyor_chord_parts WHERE group_id = ?", (gid,)
    ).fetchone()
    now = time.time()
    if count < size or (claim is not None and claim_until > now):
        return None
    token = uuid.uuid4().hex
    db.execute(
        "UPDATE conveyor_chords SET claim = ?, claim_until = ? WHERE group_id = ?",
        (token, now + claim_seconds, gid),
    )
    rows = db.execute(
        "SELECT task_id, group_index, state, result FROM conveyor_chord_parts "
        "WHERE group_id = ? ORDER BY group_index = ?, group_index, task_id",
        (gid, _NO_INDEX),
    ).fetchall()
    parts = tuple(
        ChordPart(gid, tid, None if idx == _NO_INDEX else idx, state, orjson.loads(result))
        for tid, idx, state, result in rows
    )
    return ChordJoin(gid, token, parts)


def chord_done(db: sqlite3.Connection, group_id: str, claim: str) -> bool:
    """Mark the chord done if ``claim`` still holds (inside a write transaction)."""
    changed = db.execute(
        "UPDATE conveyor_chords SET done = 1, claim = NULL WHERE group_id = ? AND claim = ?",
        (group_id, claim),
    ).rowcount
    if changed:
        db.execute("DELETE FROM conveyor_chord_parts WHERE group_id = ?", (group_id,))
    return bool(changed)


def chord_body_run(db: sqlite3.Connection, group_id: str, send: str) -> bool:
    """Record ``send`` as the body's first send unless one is; whether it is that one
    (inside a write transaction)."""
    db.execute(
        "INSERT INTO conveyor_chords (group_id, body_send, started) VALUES (?, ?, ?) "
        "ON CONFLICT (group_id) DO UPDATE SET body_send = COALESCE(body_send, excluded.body_send)",
        (group_id, send, time.time()),
    )
    row = db.execute(
        "SELECT body_send FROM conveyor_chords WHERE group_id = ?", (group_id,)
    ).fetchone()
    return bool(row[0] == send)


def forget_chords(db: sqlite3.Connection, older_than: float) -> int:
    """Remove the joins of chords started before ``older_than`` (epoch seconds), done or not,
    with their parts; how many (inside a write transaction)."""
    db.execute(
        "DELETE FROM conveyor_chord_parts WHERE group_id IN "
        "(SELECT group_id FROM conveyor_chords WHERE started < ?)",
        (older_than,),
    )
    return int(db.execute("DELETE FROM conveyor_chords WHERE started < ?", (older_than,)).rowcount)
