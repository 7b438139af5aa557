"""conveyor/testing.py: the in-process test worker, as a context manager and as the pytest
fixtures a user's suite adopts with ``pytest_plugins = ("conveyor.testing",)``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conveyor.app import App
from conveyor.errors import RoutingError
from conveyor.testing import start_worker

ROOT = Path(__file__).resolve().parents[1]


def test_start_worker_serves_sync_calls_and_restores_the_settings() -> None:
    app = App("svc", broker="amqp://nobody:nothing@127.0.0.1:1/", result_backend="rpc://")

    @app.task(name="svc.add")
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, queues=["celery"]) as worker:
        assert app.broker_url.startswith("memory://test-")
        assert add.delay(2, 2).get(timeout=10) == 4
        assert worker.hostname
    assert app.conf.broker_url == "amqp://nobody:nothing@127.0.0.1:1/"
    assert app.conf.result_backend == "rpc://"


async def test_start_worker_serves_async_calls() -> None:
    app = App("svc")

    @app.task(name="svc.upper")
    async def upper(text: str) -> str:
        return text.upper()

    with start_worker(app):
        result = await upper.adelay("quiet")
        assert await result.aget(timeout=10) == "QUIET"
        await app.aclose()


def test_a_worker_that_cannot_start_raises_its_error() -> None:
    app = App("svc", config={"task_create_missing_queues": False})
    with pytest.raises(RoutingError), start_worker(app, queues=["nowhere"]):
        pass


def test_a_users_suite_adopts_the_fixtures(tmp_path: Path) -> None:
    (tmp_path / "my_service.py").write_text(
        textwrap.dedent(
            """
            from conveyor import App

            app = App("my_service", config={"task_routes": {"my_service.*": "my_queue"}})

            @app.task(name="my_service.render")
            def render(page: str) -> str:
                return f"<h1>{page}</h1>"
            """
        )
    )
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from my_service import app as my_app

            pytest_plugins = ("conveyor.testing",)

            @pytest.fixture
            def conveyor_app():
                return my_app

            @pytest.fixture
            def conveyor_worker_parameters():
                return {"queues": ["my_queue"]}
            """
        )
    )
    (tmp_path / "test_render.py").write_text(
        textwrap.dedent(
            """
            from my_service import render

            def test_render(conveyor_worker):
                assert render.delay("home").get(timeout=10) == "<h1>home</h1>"
                assert conveyor_worker.queue_names == ("my_queue",)
            """
        )
    )
    env: dict[str, Any] = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(tmp_path)]))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
