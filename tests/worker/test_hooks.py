"""conveyor/signals.py and worker/hooks.py: signals sent around tasks and the worker's life;
middleware loaded from the worker_middleware setting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import signals
from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.results.meta import State
from conveyor.worker import Worker
from tests.worker import signal_receivers
from tests.worker.conftest import StartWorker


@pytest.fixture
def heard() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Connect a recorder to every signal; disconnect after the test."""
    events: list[tuple[str, dict[str, Any]]] = []
    receivers = []
    for name in signals.__all__:
        signal = getattr(signals, name)
        if not isinstance(signal, signals.Signal):
            continue

        def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
            events.append((_name, {"sender": sender, **kwargs}))

        signal.connect(receiver)
        receivers.append((signal, receiver))
    yield events
    for signal, receiver in receivers:
        signal.disconnect(receiver)


async def test_task_signals_in_celery_order(
    app: App, start_worker: StartWorker, heard: list[tuple[str, dict[str, Any]]]
) -> None:
    @app.task(name="sig.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="sig.boom", max_retries=0)
    def boom() -> None:
        raise ValueError("no good")

    worker = await start_worker()
    assert [name for name, _ in heard] == ["worker_ready"]
    assert heard[0][1]["sender"] is worker
    assert await (await add.adelay(2, 3)).aget(timeout=5) == 5
    with pytest.raises(ValueError, match="no good"):
        await (await boom.adelay()).aget(timeout=5)
    await asyncio.sleep(0.05)
    names = [name for name, _ in heard[1:]]
    assert names == [
        "task_prerun",
        "task_success",
        "task_postrun",
        "task_prerun",
        "task_failure",
        "task_postrun",
    ]
    prerun, success, postrun = (kw for _, kw in heard[1:4])
    assert prerun["sender"] is add
    assert prerun["task"] is add
    assert prerun["args"] == (2, 3)
    assert prerun["task_id"] == success["task_id"]
    assert success["result"] == 5
    assert postrun["retval"] == 5
    assert postrun["state"] is State.SUCCESS
    failure = heard[5][1]
    assert isinstance(failure["exception"], ValueError)
    assert "no good" in failure["traceback"]
    await worker.stop()
    assert heard[-1][0] == "worker_shutdown"


async def test_task_retry_signal(
    app: App, start_worker: StartWorker, heard: list[tuple[str, dict[str, Any]]]
) -> None:
    attempts: list[int] = []

    @app.task(name="sig.flaky", bind=True)
    def flaky(self: Any) -> str:
        attempts.append(self.request.retries)
        if self.request.retries < 1:
            raise self.retry(countdown=0)
        return "ok"

    await start_worker()
    assert await (await flaky.adelay()).aget(timeout=5) == "ok"
    await asyncio.sleep(0.05)
    retry = [kw for name, kw in heard if name == "task_retry"]
    assert len(retry) == 1
    assert retry[0]["countdown"] == 0
    assert retry[0]["request"].retries == 0
    assert [kw["state"] for name, kw in heard if name == "task_postrun"] == [
        State.RETRY,
        State.SUCCESS,
    ]


async def test_receiver_for_one_sender_and_a_failing_receiver(
    app: App, start_worker: StartWorker
) -> None:
    @app.task(name="sig.one")
    def one() -> int:
        return 1

    @app.task(name="sig.two")
    def two() -> int:
        return 2

    seen: list[Any] = []

    def only_two(sender: Any, result: Any, **kwargs: Any) -> None:
        seen.append(result)

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.task_success.connect(broken)
    signals.task_success.connect(only_two, sender="sig.two")
    try:
        await start_worker()
        assert await (await one.adelay()).aget(timeout=5) == 1
        assert await (await two.adelay()).aget(timeout=5) == 2
        await asyncio.sleep(0.05)
    finally:
        signals.task_success.disconnect(broken)
        signals.task_success.disconnect(only_two, sender="sig.two")
    assert seen == [2]


def test_connect_is_idempotent_and_disconnect_says_whether_connected() -> None:
    signal = signals.Signal("custom")

    @signal.connect
    def receiver(sender: Any, **kwargs: Any) -> str:
        return f"got {kwargs['x']} from {sender}"

    signal.connect(receiver)
    assert signal.receivers == [receiver]
    assert signal.send("me", x=1) == [(receiver, "got 1 from me")]
    assert signal.disconnect(receiver) is True
    assert signal.disconnect(receiver) is False
    assert signal.send("me", x=1) == []


async def test_worker_middleware_setting_loads_a_users_module(
    app: App, start_worker: StartWorker
) -> None:
    signal_receivers.EVENTS.clear()
    app.conf.worker_middleware = ["tests.worker.signal_receivers:Recording"]

    @app.task(name="sig.fails", max_retries=0)
    def fails() -> None:
        raise KeyError("k")

    try:
        await start_worker(hostname="hooks@test")
        with pytest.raises(KeyError, match="k"):
            await (await fails.adelay()).aget(timeout=5)
        await asyncio.sleep(0.05)
    finally:
        signals.worker_ready.disconnect(signal_receivers.on_ready)
        signals.task_failure.disconnect(signal_receivers.on_failure)
    assert signal_receivers.EVENTS == [
        "worker_ready hooks@test",
        "middleware.before sig.fails",
        "task_failure sig.fails KeyError('k')",
        "middleware.after FAILURE",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "tests.worker.no_such_module:Thing",
            "worker_middleware entry 'tests.worker.no_such_module:Thing': cannot import "
            "'tests.worker.no_such_module': No module named 'tests.worker.no_such_module'",
        ),
        (
            "tests.worker.signal_receivers:Missing",
            "worker_middleware entry 'tests.worker.signal_receivers:Missing': module "
            "'tests.worker.signal_receivers' has no 'Missing'",
        ),
        (
            "tests.worker.signal_receivers:EVENTS",
            "worker_middleware entry 'tests.worker.signal_receivers:EVENTS' is a list, not a "
            "conveyor.Middleware (an instance or a subclass)",
        ),
        ("nodots", "worker_middleware entry 'nodots' is not an import path: write 'module:attr'"),
    ],
)
def test_a_bad_middleware_entry_is_a_clear_error(app: App, entry: str, message: str) -> None:
    app.conf.worker_middleware = [entry]
    with pytest.raises(ConfigurationError) as caught:
        Worker(app)
    assert str(caught.value) == message
