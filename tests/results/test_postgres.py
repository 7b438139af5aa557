"""The postgresql:// backend beyond the shared contract: schema, errors, shared LISTEN, chords."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.results import ResultMeta, State, StoreRequest, open_backend
from conveyor.results.postgres import PostgresBackend
from conveyor.results.postgres_connection import SCHEMA_VERSION, split_pg_url
from tests.conftest import postgres_namespace
from tests.results.helpers import NoBrokerHost


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    return postgres_namespace(request)


def table_of(url: str) -> str:
    return url.rsplit("table=", 1)[1]


def ok(task_id: str, value: object) -> StoreRequest:
    return StoreRequest(ResultMeta.success(task_id, value, worker="w1", task="t"))


async def test_tables_are_created_on_first_use_with_the_schema_version(
    pg_url: str, postgres_url: str
) -> None:
    table = table_of(pg_url)
    async with open_backend(pg_url, host=NoBrokerHost()) as backend:
        await backend.store(ok("s1", 1))
    with psycopg.connect(postgres_url) as conn:
        version = conn.execute(
            "SELECT version FROM conveyor_schema WHERE name = %s", (table,)
        ).fetchone()
        assert version == (SCHEMA_VERSION,)
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,)
            )
        }
        assert f"{table}_done" in indexes
        row = conn.execute(f"SELECT state FROM {table} WHERE task_id = 's1'").fetchone()
        assert row == ("SUCCESS",)


async def test_a_newer_schema_is_refused_and_left_untouched(pg_url: str, postgres_url: str) -> None:
    table = table_of(pg_url)
    async with open_backend(pg_url, host=NoBrokerHost()) as backend:
        await backend.store(ok("kept", 1))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE conveyor_schema SET version = 99 WHERE name = %s", (table,))
    backend = open_backend(pg_url, host=NoBrokerHost())
    with pytest.raises(ConfigurationError, match=r"schema version 99, newer .*upgrade conveyor"):
        await backend.connect()
    await backend.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        assert conn.execute(
            "SELECT version FROM conveyor_schema WHERE name = %s", (table,)
        ).fetchone() == (99,)


@pytest.mark.parametrize(
    ("path", "said"),
    [("/no_such_db_conveyor", "does not exist"), ("/test?user=no_such_role", "does not exist")],
)
async def test_a_refused_connection_is_a_clear_error_without_the_password(
    postgres_url: str, path: str, said: str
) -> None:
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:5432{path}"
    if "user=" in path:
        url = "postgresql://no_such_role:s3cret-pw@127.0.0.1:5432/test"
    backend = open_backend(url, host=NoBrokerHost())
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        await backend.connect()
    await backend.close()
    message = str(caught.value)
    assert said in message
    assert "s3cret-pw" not in message
    assert ":***@127.0.0.1:5432" in message
    assert time.monotonic() - started < 5  # a refusal is not retried for reconnect_timeout


def test_bad_options_are_configuration_errors() -> None:
    host = NoBrokerHost()
    with pytest.raises(ConfigurationError, match="table="):
        open_backend("postgresql://u:pw@h/db?table=bad-name;drop", host=host)
    with pytest.raises(ConfigurationError, match="pool_size"):
        open_backend("postgresql://u:pw@h/db?pool_size=zero", host=host)


async def test_an_unknown_libpq_parameter_is_a_configuration_error(postgres_url: str) -> None:
    backend = open_backend(f"{postgres_url}?bogus_param=1", host=NoBrokerHost())
    with pytest.raises(ConfigurationError, match="bogus_param"):
        await backend.connect()
    await backend.close()


def _listen_connections(url: str, table: str) -> int:
    """How many connections LISTEN on ``table``'s channel, once there is one (30 s at most)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = %s", (f'LISTEN "{table}"',)
            ).fetchone()
            count = int(row[0]) if row else 0
            if count or time.monotonic() > deadline:
                return count
            time.sleep(0.1)


async def test_thousands_of_waiters_share_one_listen_connection(
    pg_url: str, postgres_url: str
) -> None:
    table = table_of(pg_url)
    reader = open_backend(pg_url, host=NoBrokerHost())
    other = open_backend(pg_url, host=NoBrokerHost())
    writer = open_backend(pg_url, host=NoBrokerHost())
    try:
        ids = [f"many-{i}" for i in range(2000)]
        waits = [asyncio.create_task(b.wait(i, timeout=90)) for b in (reader, other) for i in ids]
        listening = await asyncio.to_thread(_listen_connections, postgres_url, table)
        assert listening == 1
        await writer.store_many([ok(i, i) for i in ids])
        results = await asyncio.gather(*waits)
        assert [m.result for m in results] == ids + ids
    finally:
        for backend in (writer, other, reader):
            await backend.close()


async def test_a_waiter_that_starts_after_the_result_landed_finds_it_at_once(
    pg_url: str,
) -> None:
    async with (
        open_backend(pg_url, host=NoBrokerHost()) as writer,
        open_backend(pg_url, host=NoBrokerHost()) as reader,
    ):
        await writer.store(ok("early", "here"))
        started = time.monotonic()
        meta = await reader.wait("early", timeout=30)
        assert meta.result == "here"
        assert time.monotonic() - started < 2


async def test_chord_counter_says_done_exactly_once_across_processes_views(pg_url: str) -> None:
    one = open_backend(pg_url, host=NoBrokerHost())
    two = open_backend(pg_url, host=NoBrokerHost())
    assert isinstance(one, PostgresBackend)
    assert isinstance(two, PostgresBackend)
    try:
        calls = [b.chord_part_done("g1", 40) for b in (one, two) for _ in range(20)]
        done = await asyncio.gather(*calls)
        assert done.count(True) == 1
        assert await one.chord_part_done("g1", 40) is False  # a redelivered part: not again
        parts = [one.store_chord_part(ok(f"p{i}", i), "g2", 3) for i in range(3)]
        assert sorted(await asyncio.gather(*parts)) == [False, False, True]
        for i in range(3):
            meta = await two.get(f"p{i}")
            assert meta is not None
            assert meta.result == i
    finally:
        await one.close()
        await two.close()


async def test_result_expires_removes_old_results_through_the_app(pg_url: str) -> None:
    app = App("pg-expire", broker="memory://pg-expire", result_backend=pg_url)
    try:
        backend = await app.abackend()
        old = ResultMeta("old", State.SUCCESS, result=1, date_done=time.time() - 3600)
        await backend.store(StoreRequest(old))
        await backend.store(ok("new", 2))
        assert await backend.cleanup(older_than=time.time() - 60) == 1
        assert await backend.get("old") is None
        assert await backend.get("new") is not None
    finally:
        await app.aclose()


def test_the_url_splits_into_libpq_parameters_and_conveyors_options() -> None:
    conninfo, options = split_pg_url(
        "postgres://u:p%40ss@db.example:6543/shop?sslmode=require&table=results&pool_size=3"
    )
    assert conninfo == "postgresql://u:p%40ss@db.example:6543/shop?sslmode=require"
    assert (options.table, options.pool_size, options.reconnect_timeout) == ("results", 3, 60.0)
