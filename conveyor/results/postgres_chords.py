"""Chord joins in PostgreSQL: two tables beside the results, each join step one transaction.

``<table>_chords`` holds a chord's size, its body-send claim (token and deadline), whether it is
done and the mark of the body's first send; ``<table>_chord_parts`` holds each finished header
part once, keyed by chord, task id and place (``ON CONFLICT DO NOTHING``: a redelivered task's
second report changes nothing). A part's count locks its chord's row (``FOR UPDATE``), so two
workers finishing the last two parts at once are serialized and exactly one gets the join. The
rules are those of ``ResultBackend.chord_part_done``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from psycopg import sql

from conveyor.results.base import ChordJoin, ChordPart

__all__ = ["ChordTables", "chord_schema"]

_NO_INDEX = -1  # a part whose place is unknown (sorts last when read)


def chord_schema(table: str) -> list[sql.Composed]:
    """The statements that create the chord tables of results table ``table``."""
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " group_id TEXT PRIMARY KEY,"
            " size INTEGER,"
            " claim TEXT,"
            " claim_until DOUBLE PRECISION NOT NULL DEFAULT 0,"
            " done BOOLEAN NOT NULL DEFAULT FALSE,"
            " body_send TEXT,"
            " created DOUBLE PRECISION NOT NULL)"
        ).format(sql.Identifier(f"{table}_chords")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " group_id TEXT NOT NULL,"
            " task_id TEXT NOT NULL,"
            " group_index INTEGER NOT NULL,"
            " state TEXT NOT NULL,"
            " result TEXT NOT NULL,"
            " PRIMARY KEY (group_id, task_id, group_index))"
        ).format(sql.Identifier(f"{table}_chord_parts")),
    ]


class ChordTables:
    """The join steps over the chord tables of results table ``table``; each method runs
    inside the caller's transaction on ``conn`` (a psycopg AsyncConnection)."""

    def __init__(self, table: str) -> None:
        self.chords = sql.Identifier(f"{table}_chords")
        self.parts = sql.Identifier(f"{table}_chord_parts")

    async def start(self, conn: Any, group_id: str, size: int) -> None:
        """Record the chord's size and forget an earlier run of it."""
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (group_id, size, created) VALUES (%s, %s, %s)"
                " ON CONFLICT (group_id) DO UPDATE SET size = excluded.size, claim = NULL,"
                " claim_until = 0, done = FALSE, body_send = NULL, created = excluded.created"
            ).format(self.chords),
            (group_id, size, time.time()),
        )
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE group_id = %s").format(self.parts), (group_id,)
        )

    async def part_done(self, conn: Any, part: ChordPart, claim_seconds: float) -> ChordJoin | None:
        """Count ``part``; the join and a claim for the one caller that completes the count."""
        gid = part.group_id
        cur = await conn.execute(
            sql.SQL(
                "SELECT size, claim, claim_until, done FROM {} WHERE group_id = %s FOR UPDATE"
            ).format(self.chords),
            (gid,),
        )
        row = await cur.fetchone()
        if row is not None and row[3]:
            return None
        index = _NO_INDEX if part.group_index is None else part.group_index
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (group_id, task_id, group_index, state, result)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ).format(self.parts),
            (gid, part.task_id, index, str(part.state), orjson.dumps(part.result).decode()),
        )
        if row is None or row[0] is None:
            return None
        size, claim, claim_until = row[0], row[1], row[2]
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE group_id = %s").format(self.parts), (gid,)
        )
        (count,) = await cur.fetchone()
        now = time.time()
        if count < size or (claim is not None and claim_until > now):
            return None
        token = uuid.uuid4().hex
        await conn.execute(
            sql.SQL("UPDATE {} SET claim = %s, claim_until = %s WHERE group_id = %s").format(
                self.chords
            ),
            (token, now + claim_seconds, gid),
        )
        cur = await conn.execute(
            sql.SQL(
                "SELECT task_id, group_index, state, result FROM {} WHERE group_id = %s"
                " ORDER BY group_index = %s, group_index, task_id"
            ).format(self.parts),
            (gid, _NO_INDEX),
        )
        parts = tuple(
            ChordPart(gid, tid, None if idx == _NO_INDEX else idx, state, orjson.loads(result))
            for tid, idx, state, result in await cur.fetchall()
        )
        return ChordJoin(gid, token, parts)

    async def done(self, conn: Any, group_id: str, claim: str) -> bool:
        """Mark the chord done if ``claim`` still holds; drop its parts."""
        cur = await conn.execute(
            sql.SQL(
                "UPDATE {} SET done = TRUE, claim = NULL WHERE group_id = %s AND claim = %s"
            ).format(self.chords),
            (group_id, claim),
        )
        if not cur.rowcount:
            return False
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE group_id = %s").format(self.parts), (group_id,)
        )
        return True

    async def body_run(self, conn: Any, group_id: str, send: str) -> bool:
        """Record ``send`` as the body's first send unless one is; whether it is that one."""
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {0} (group_id, body_send, created) VALUES (%s, %s, %s)"
                " ON CONFLICT (group_id) DO UPDATE"
                " SET body_send = COALESCE({0}.body_send, excluded.body_send)"
                " RETURNING body_send"
            ).format(self.chords),
            (group_id, send, time.time()),
        )
        row = await cur.fetchone()
        return bool(row is not None and row[0] == send)

    async def cleanup(self, conn: Any, older_than: float) -> None:
        """Drop chords started before ``older_than`` (epoch seconds), with their parts."""
        await conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE group_id IN (SELECT group_id FROM {} WHERE created < %s)"
            ).format(self.parts, self.chords),
            (older_than,),
        )
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE created < %s").format(self.chords), (older_than,)
        )
