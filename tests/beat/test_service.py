"""The beat loop on the memory:// broker with an injected clock: leases, exactly once, policies."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor import App, ConfigurationError, crontab
from conveyor.beat import Beat, task_id_for
from conveyor.beat.store import Fire

START = datetime(2024, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def url() -> str:
    return f"memory://beat-{uuid.uuid4().hex}"


def make_app(url: str, schedule: dict[str, Any], **config: Any) -> App:
    return App(
        "beat-tests",
        broker=url,
        result_backend=url,
        config={"beat_schedule": schedule, "task_ignore_result": True, **config},
    )


@pytest.fixture
async def app(url: str) -> AsyncIterator[App]:
    app = make_app(url, {"every": {"task": "t.every", "schedule": 1, "options": {"queue": "q"}}})
    yield app
    await app.aclose()


async def drain(app: App, queue: str = "q") -> list[str]:
    transport = await app.atransport()
    ids = []
    while (delivery := await transport.get(queue, no_ack=True)) is not None:
        ids.append(delivery.envelope.headers["id"])
    return ids


def ids(beat: str, entry: str, seconds: range) -> list[str]:
    return [task_id_for(beat, entry, START + timedelta(seconds=s)) for s in seconds]


async def test_two_beats_send_each_due_time_once(app: App) -> None:
    clock = Clock()
    first, second = Beat(app, clock=clock), Beat(app, clock=clock)
    for _ in range(10):
        await first.tick()
        await second.tick()
        clock.advance(1)
    assert first.leading
    assert not second.leading
    # A new entry owes the due times within beat_grace (2 s) of its first round.
    assert await drain(app) == ids("beat-tests", "every", range(-2, 10))


async def test_successor_takes_over_after_the_lease_and_catches_up(url: str) -> None:
    app = make_app(url, {"every": {"task": "t", "schedule": 1, "options": {"queue": "q"}}})
    app.conf.beat_lease = 0.2
    clock = Clock()
    first, second = Beat(app, clock=clock), Beat(app, clock=clock)
    await first.tick()
    await second.tick()
    clock.advance(5)  # the leader dies; five due times pass before anyone notices
    await asyncio.sleep(0.25)
    await second.tick()
    assert second.leading
    # Catch-up "latest": of the missed 1 and 2 the latest once, then those at most
    # beat_grace (2 s) late: 3, 4 and 5.
    assert await drain(app) == ids("beat-tests", "every", [-2, -1, 0, 2, 3, 4, 5])
    await app.aclose()


async def test_claimed_but_unconfirmed_fire_is_sent_again_under_its_own_id(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    beat = Beat(app, clock=clock)
    due = START - timedelta(seconds=1)
    fire = Fire("every", due, task_id_for(beat.name, "every", due), beat.entries[0].signature)
    store = beat.store
    assert await store.hold("dead leader")
    assert await store.claim("dead leader", [fire])  # it died before sending or confirming
    await store.release("dead leader")
    with caplog.at_level(logging.WARNING, "conveyor.beat"):
        await beat.tick()
    sent = await drain(app)
    assert sent.count(fire.task_id) == 1
    assert sent == ids(beat.name, "every", range(-1, 1))
    assert "sending it again with the same task id" in caplog.text
    assert (await store.load())["every"].confirmed


async def test_overlap_skip_waits_for_the_previous_run(url: str) -> None:
    app = make_app(
        url,
        {"slow": {"task": "t.slow", "schedule": 1, "overlap": "skip", "options": {"queue": "q"}}},
        task_ignore_result=False,
    )
    clock = Clock()
    beat = Beat(app, clock=clock)
    for _ in range(4):
        await beat.tick()
        clock.advance(1)
    # Nothing runs the first task, so every later due time is passed over.
    assert await drain(app) == [task_id_for(beat.name, "slow", START - timedelta(seconds=2))]
    await app.aclose()


async def test_pause_resume_and_trigger(app: App) -> None:
    clock = Clock()
    beat = Beat(app, clock=clock)
    await beat.tick()
    await drain(app)
    await beat.store.set_paused("every", True)
    clock.advance(1)
    await beat.tick()
    clock.advance(1)
    await beat.store.request_trigger("every")
    await beat.tick()
    assert await drain(app) == [task_id_for(beat.name, "every", clock.now)]  # the trigger only
    await beat.store.set_paused("every", False)
    clock.advance(1)
    await beat.tick()
    assert await drain(app) == ids(beat.name, "every", [3])


async def test_restart_forgets_removed_entries_and_keeps_unchanged_ones(url: str) -> None:
    old = make_app(
        url,
        {
            "kept": {"task": "t", "schedule": 1, "options": {"queue": "q"}},
            "gone": {"task": "t", "schedule": 1, "options": {"queue": "q"}},
            "changed": {"task": "t", "schedule": 1, "options": {"queue": "q"}},
        },
    )
    clock = Clock()
    beat = Beat(old, clock=clock, holder="h")
    await beat.tick()
    await beat.store.release("h")
    new = make_app(
        url,
        {
            "kept": {"task": "t", "schedule": 1, "options": {"queue": "q"}},
            "changed": {"task": "t", "schedule": crontab(minute=30), "options": {"queue": "q"}},
        },
    )
    restarted = Beat(new, clock=clock, holder="h2")
    await restarted.tick()
    states = await restarted.store.load()
    assert set(states) == {"kept"}  # "changed" counts from now: nothing due yet under cron
    assert states["kept"].last_due == START
    await old.aclose()
    await new.aclose()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"schedule": 1}, "'task' must name a task"),
        ({"task": "t"}, "give a 'schedule'"),
        ({"task": "t", "schedule": 1, "options": {"queues": "x"}}, "unknown send option"),
        ({"task": "t", "schedule": 1, "catchup": "some"}, "must be one of"),
        ({"task": "t", "schedule": 1, "overlap": "never"}, "must be one of"),
        ({"task": "t", "schedule": 1, "jitter": -1}, "jitter"),
        ({"task": "t", "schedule": 1, "every": 2}, "unknown key"),
        ({"task": "t", "schedule": 1, "args": [object()]}, "JSON"),
    ],
)
def test_bad_entries_are_configuration_errors(entry: dict[str, Any], message: str) -> None:
    app = App("x", broker="memory://x", config={"beat_schedule": {"e": entry}})
    with pytest.raises(ConfigurationError, match=message):
        Beat(app)


def test_unknown_zone_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        App("x", broker="memory://x", config={"timezone": "Nowhere/Land"})
