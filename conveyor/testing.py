"""A test helper for your own suite: an in-process worker on ``memory://`` for your app.

In your ``conftest.py``::

    import pytest
    from my_service import app as my_app

    pytest_plugins = ("conveyor.testing",)

    @pytest.fixture
    def conveyor_app():
        return my_app

and in a test::

    def test_render(conveyor_worker):
        assert render.delay("home").get(timeout=10) == "<h1>home</h1>"

The fixtures:

- ``conveyor_app``: the App under test. Override it to return yours; by default a fresh
  ``App("tests")`` (register tasks on it in the test).
- ``conveyor_worker_parameters``: keyword arguments for :class:`~conveyor.worker.Worker`
  (``queues``, ``pool``, ``concurrency``...); override it, default ``{}``.
- ``conveyor_worker``: for the length of the test, points the app's broker and result backend
  at a fresh ``memory://`` broker and runs a worker consuming it in a background thread (with
  its own event loop), so plain and ``async def`` tests can both send to it; yields the
  :class:`~conveyor.worker.Worker`. Afterwards the worker is stopped and the app's settings
  are restored.

The same as a context manager, outside pytest: :func:`start_worker`. For tests that need no
worker at all, set ``task_always_eager`` (see :mod:`conveyor.eager`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.worker import Worker

__all__ = [
    "conveyor_app",
    "conveyor_worker",
    "conveyor_worker_parameters",
    "start_worker",
]


class _WorkerThread(threading.Thread):
    """Runs ``worker`` on a new event loop until :meth:`finish`."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name=f"conveyor-test-worker-{worker.hostname}", daemon=True)
        self.worker = worker
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finish: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._finish = asyncio.Event()
        try:
            await self.worker.start()
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            await self.worker.stop(immediate=True)
            return
        self.ready.set()
        await self._finish.wait()
        await self.worker.stop()

    def finish(self, timeout: float) -> None:
        loop, finish = self._loop, self._finish
        if loop is not None and finish is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(finish.set)
        self.join(timeout)


@contextlib.contextmanager
def start_worker(
    app: App,
    *,
    broker: str | None = None,
    start_timeout: float = 10.0,
    **worker_options: Any,
) -> Iterator[Worker]:
    """Run a worker for ``app`` in a background thread for the block; yield it.

    ``broker`` (default: a fresh ``memory://test-<uuid>``) becomes the app's broker and result
    backend for the block; the previous settings come back afterwards, and what the app's sync
    API opened is closed at both ends. ``worker_options`` go to :class:`Worker` (default
    concurrency 2, shutdown grace 5 s). Raises what the worker's start raised (an unknown
    queue...), or ConfigurationError if it did not start within ``start_timeout`` seconds.
    """
    url = broker or f"memory://test-{uuid.uuid4().hex}"
    saved = (app.conf.broker_url, app.conf.result_backend)
    app.close()
    app.conf.broker_url = url
    app.conf.result_backend = url
    worker_options.setdefault("concurrency", 2)
    worker_options.setdefault("shutdown_grace", 5.0)
    thread: _WorkerThread | None = None
    try:
        worker = Worker(app, **worker_options)
        thread = _WorkerThread(worker)
        thread.start()
        if not thread.ready.wait(start_timeout):
            raise ConfigurationError(
                f"the test worker did not start within {start_timeout:g} s on {url}"
            )
        if thread.error is not None:
            raise thread.error
        yield worker
    finally:
        if thread is not None:
            thread.finish(worker_options["shutdown_grace"] + 5.0)
        app.close()
        app.conf.broker_url, app.conf.result_backend = saved


@pytest.fixture
def conveyor_app() -> App:
    """The App under test: override this fixture to return yours."""
    return App("tests")


@pytest.fixture
def conveyor_worker_parameters() -> dict[str, Any]:
    """Keyword arguments for the test worker (see :class:`Worker`); override to change."""
    return {}


@pytest.fixture
def conveyor_worker(
    conveyor_app: App, conveyor_worker_parameters: dict[str, Any]
) -> Iterator[Worker]:
    """A worker for ``conveyor_app`` on a fresh ``memory://`` broker (see the module's text)."""
    with start_worker(conveyor_app, **conveyor_worker_parameters) as worker:
        yield worker
