"""Pipelined confirms: a sync send on a route that had one confirmed returns before the broker's
confirm, and conveyor keeps the message until it comes: flush, close and exit wait for it, a
refused one raises at the next send or flush, a lost connection's ones are sent again."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conveyor import App
from conveyor.errors import Unroutable
from tests.rabbitmqctl import close_connections_named, needs_rabbitmqctl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def app() -> Iterator[App]:
    name = f"memory://unconfirmed-{uuid.uuid4().hex}"
    made = App("unconfirmed", broker=name, config={"task_ignore_result": True})
    made.conf.task_default_queue = "work"
    yield made
    made.close()


def ready(app: App, queue: str) -> int:
    async def count() -> int:
        transport = await app.atransport()
        return (await transport.queue_stats(queue)).ready

    return app.run_sync(count())


def task_ids(app: App, queue: str) -> list[str]:
    """Take every message off ``queue``; their task ids in order."""

    async def take() -> list[str]:
        transport = await app.atransport()
        ids = []
        while (delivery := await transport.get(queue, no_ack=True)) is not None:
            ids.append(str(delivery.envelope.headers["id"]))
        return ids

    return app.run_sync(take())


class Gate:
    """Holds every publish of ``app``'s transport until opened (the broker's confirm late);
    ``started`` counts the messages held."""

    def __init__(self, app: App) -> None:
        self.opened: asyncio.Event | None = None
        self.started = 0

        async def install() -> None:
            transport = await app.atransport()
            publish, publish_many = transport.publish, transport.publish_many
            self.opened = asyncio.Event()
            self.loop = asyncio.get_running_loop()

            async def held(*args: Any, **kwargs: Any) -> int:
                self.started += 1
                assert self.opened is not None
                await self.opened.wait()
                return await publish(*args, **kwargs)

            async def held_many(messages: Any, *args: Any, **kwargs: Any) -> Any:
                self.started += len(messages)
                assert self.opened is not None
                await self.opened.wait()
                return await publish_many(messages, *args, **kwargs)

            transport.publish = held  # type: ignore[method-assign]
            transport.publish_many = held_many  # type: ignore[method-assign]

        app.run_sync(install())

    def open(self) -> None:
        assert self.opened is not None
        self.loop.call_soon_threadsafe(self.opened.set)


def test_a_send_returns_before_its_confirm_and_flush_waits_for_it(app: App) -> None:
    app.send_task("t.first")  # confirmed: the route is known to take messages
    gate = Gate(app)
    sent = [app.send_task("t.later", (n,)).id for n in range(5)]
    assert len(set(sent)) == 5
    assert ready(app, "work") == 1
    assert gate.started == 5
    flushing = threading.Thread(target=app.flush)
    flushing.start()
    flushing.join(0.3)
    assert flushing.is_alive()  # flush waits for the confirms
    gate.open()
    flushing.join(5)
    assert not flushing.is_alive()
    assert task_ids(app, "work")[1:] == sent


def test_another_task_on_a_confirmed_route_is_sent_without_running_the_loop(app: App) -> None:
    app.send_task("t.first")  # confirmed: the route is known to take messages
    app.send_task("t.other")  # another task's route to the same queue, learnt by this send
    through_loop: list[object] = []
    run_sync = app.run_sync

    def counted(coro: Any) -> Any:
        through_loop.append(coro)
        return run_sync(coro)

    app.run_sync = counted  # type: ignore[method-assign]
    sent = [app.send_task("t.other", (n,)).id for n in range(3)]
    app.run_sync = run_sync  # type: ignore[method-assign]
    assert through_loop == []  # handed to the loop, not run by this thread
    app.flush()
    assert task_ids(app, "work")[2:] == sent


def test_with_a_window_of_zero_every_send_waits_for_its_confirm(app: App) -> None:
    app.conf.task_publish_window = 0
    app.send_task("t.first")
    gate = Gate(app)
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(app.send_task, "t.later")
        time.sleep(0.3)
        assert not sending.done()
        gate.open()
        sending.result(5)
    assert ready(app, "work") == 2


def test_the_window_bounds_the_sends_not_yet_confirmed(app: App) -> None:
    app.conf.task_publish_window = 3
    app.send_task("t.first")
    gate = Gate(app)
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(lambda: [app.send_task("t.later") for _ in range(4)])
        time.sleep(0.3)
        assert not sending.done()  # the fourth waits for one of the three to be confirmed
        assert gate.started == 3
        gate.open()
        sending.result(5)
    app.flush()
    assert ready(app, "work") == 5


def test_a_refused_send_raises_at_the_next_send_and_is_logged(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.send_task("t.first", queue="doomed")
    app.run_sync(_delete_queue(app, "doomed"))
    lost = app.send_task("t.lost", queue="doomed")  # returns: the route took one before
    app.run_sync(asyncio.sleep(0.05))  # the loop reads the broker's refusal meanwhile
    assert any(lost.id in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    with pytest.raises(Unroutable, match="'doomed'") as raised:
        app.send_task("t.fine")
    assert any(lost.id in note for note in raised.value.__notes__)
    app.send_task("t.fine")  # raised once: the next send is not blamed for it again
    app.flush()


def test_a_refused_send_raises_at_flush(app: App) -> None:
    app.send_task("t.first", queue="doomed")
    app.run_sync(_delete_queue(app, "doomed"))
    lost = app.send_task("t.lost", queue="doomed")
    with pytest.raises(Unroutable) as raised:
        app.flush()
    assert any(lost.id in note for note in raised.value.__notes__)
    app.flush()


async def _delete_queue(app: App, name: str) -> None:
    transport = await app.atransport()
    await transport.delete_queue(name)


def test_close_waits_for_sends_not_yet_confirmed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    sender = App("sender", broker=url, config={"task_ignore_result": True})
    sent = [sender.send_task("t.n", (n,), queue="work").id for n in range(300)]
    sender.close()
    reader = App("reader", broker=url)
    try:
        assert sorted(task_ids(reader, "work")) == sorted(sent)
    finally:
        reader.close()


def test_sends_not_yet_confirmed_at_exit_reach_the_broker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    script = (
        "from conveyor import App\n"
        f"app = App('exit', broker={url!r}, config={{'task_ignore_result': True}})\n"
        "for n in range(2000):\n"
        "    app.send_task('t.n', (n,), queue='work')\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)
    reader = App("reader", broker=url)
    try:
        assert ready(reader, "work") == 2000
    finally:
        reader.close()


def test_eight_threads_sending_at_once_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    sender = App("sender", broker=url, config={"task_ignore_result": True})
    try:
        with ThreadPoolExecutor(8) as pool:
            parts = list(
                pool.map(
                    lambda k: [
                        sender.send_task("t.n", (k, n), queue="work").id for n in range(200)
                    ],
                    range(8),
                )
            )
        sender.flush()
        got = task_ids(sender, "work")
        assert sorted(got) == sorted(i for part in parts for i in part)
    finally:
        sender.close()


@needs_rabbitmqctl
def test_rabbitmq_sends_of_a_lost_connection_are_sent_again(rabbitmq_url: str) -> None:
    client_name = f"conveyor-unconfirmed-{uuid.uuid4().hex}"
    queue = f"unconfirmed-{uuid.uuid4().hex}"
    sender = App(
        "sender",
        broker=f"{rabbitmq_url}?client_name={client_name}&reconnect_max_delay=0.2",
        config={"task_ignore_result": True},
    )
    sender.conf.task_default_queue = queue
    try:
        sent = [sender.send_task("t.n", (n,)).id for n in range(1500)]
        assert close_connections_named(client_name) == 1
        sent += [sender.send_task("t.n", (n,)).id for n in range(1500, 3000)]
        sender.flush()
        got = task_ids(sender, queue)
        assert set(got) == set(sent)  # at least once: a message may come twice, none is lost
    finally:
        sender.run_sync(_delete_queue(sender, queue))
        sender.close()


def test_rabbitmq_sends_are_confirmed_from_eight_threads(rabbitmq_url: str) -> None:
    queue = f"unconfirmed-{uuid.uuid4().hex}"
    sender = App("sender", broker=rabbitmq_url, config={"task_ignore_result": True})
    sender.conf.task_default_queue = queue
    try:
        with ThreadPoolExecutor(8) as pool:
            parts = list(
                pool.map(
                    lambda k: [sender.send_task("t.n", (k, n)).id for n in range(300)], range(8)
                )
            )
        sender.flush()
        assert sorted(task_ids(sender, queue)) == sorted(i for part in parts for i in part)
    finally:
        sender.run_sync(_delete_queue(sender, queue))
        sender.close()


def test_rabbitmq_refused_send_from_a_thread_raises_at_flush(rabbitmq_url: str) -> None:
    queue = f"unconfirmed-{uuid.uuid4().hex}"
    sender = App("sender", broker=rabbitmq_url, config={"task_ignore_result": True})
    sender.conf.task_default_queue = queue
    try:
        sender.send_task("t.first")
        sender.run_sync(_delete_queue(sender, queue))
        lost = sender.send_task("t.lost")
        with pytest.raises(Unroutable) as raised:
            sender.flush()
        assert any(lost.id in note for note in raised.value.__notes__)
    finally:
        sender.close()


def test_every_refused_send_is_logged_and_raised_once(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.send_task("t.first", queue="doomed")
    app.run_sync(_delete_queue(app, "doomed"))
    lost: list[str] = []
    raised: list[Unroutable] = []
    while len(lost) < 20:  # a send raises an earlier one's failure instead of sending
        try:
            lost.append(app.send_task("t.lost", (len(lost),), queue="doomed").id)
        except Unroutable as exc:
            raised.append(exc)
    while True:
        try:
            app.flush()
            break
        except Unroutable as exc:
            raised.append(exc)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for task_id in lost:
        assert sum(task_id in message for message in errors) == 1
        assert sum(task_id in "".join(exc.__notes__) for exc in raised) == 1
    assert len(raised) == len(lost)
