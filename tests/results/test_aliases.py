"""Celery's ways of naming a result backend: ``'rpc'`` (the seeds' literal), ``'redis'``,
``db+URL``, ``cache+memory://``; a Celery backend conveyor lacks is an error naming what it has."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conveyor import App, ConfigurationError
from conveyor.results import backend_class, backend_url
from conveyor.results.redis import RedisBackend
from conveyor.results.rpc import RPCBackend
from conveyor.results.sqlite import SQLiteBackend
from conveyor.worker import Worker


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("rpc", "rpc://"),
        ("RPC", "rpc://"),
        ("rpc://", "rpc://"),
        ("redis", "redis://"),
        ("db+sqlite:///results.db", "sqlite:///results.db"),
        ("cache+memory://", "memory://"),
    ],
)
def test_celery_names_become_urls(given: str, url: str) -> None:
    assert backend_url(given) == url


def test_bare_names_pick_the_backend() -> None:
    assert backend_class(App(broker="memory://", result_backend="rpc").backend_url) is RPCBackend
    redis = App(broker="memory://", result_backend="redis")
    assert (redis.backend_url, backend_class(redis.backend_url)) == ("redis://", RedisBackend)


def test_celery_backends_conveyor_lacks_are_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"'mongodb' is one of Celery's.*rpc://"):
        backend_url("mongodb")
    with pytest.raises(ConfigurationError, match="task_ignore_result"):
        backend_url("disabled")
    with pytest.raises(ConfigurationError, match="neither a URL nor a backend name"):
        backend_url("rcp")


async def test_the_seeds_literal_rpc_carries_a_result(tmp_path: Path) -> None:
    broker = f"memory://names-{uuid.uuid4().hex}"
    app = App("svc", config={"CELERY_RESULT_BACKEND": "rpc", "broker_url": broker})

    @app.task(name="names.add")
    def add(x: int, y: int) -> int:
        return x + y

    worker = Worker(app, concurrency=1)
    await worker.start()
    try:
        assert app.backend_url == "rpc://"
        result = await add.adelay(2, 3)
        assert await result.aget(timeout=10) == 5
    finally:
        await worker.stop()
        await app.aclose()


async def test_db_plus_sqlite_is_the_sqlite_backend(tmp_path: Path) -> None:
    app = App(broker="memory://", result_backend=f"db+sqlite:///{tmp_path}/results.db")
    assert backend_class(app.backend_url) is SQLiteBackend
    backend = await app.abackend()
    assert isinstance(backend, SQLiteBackend)
    await app.aclose()
    assert (tmp_path / "results.db").exists()
