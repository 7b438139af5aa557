"""Chains, groups, chords, links and their failure rules, run by a real worker on each broker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from conveyor.app import App
from conveyor.canvas import GroupResult, chain, chord, group, signature
from conveyor.errors import ChordError
from conveyor.options import SEND_OPTION_NAMES
from conveyor.worker import Worker
from tests.canvas.conftest import Flow, define

T = 20.0


async def test_chain_passes_each_result_to_the_next_step(flow: Flow) -> None:
    result = await (flow.add.s(1, 2) | flow.add.s(10) | flow.mul.s(3)).aapply_async()
    assert await result.aget(timeout=T) == 39


async def test_immutable_step_ignores_the_previous_result(flow: Flow) -> None:
    result = await chain(flow.add.s(1, 1), flow.add.si(5, 5), flow.add.s(1)).aapply_async()
    assert await result.aget(timeout=T) == 11


async def test_group_results_come_in_the_order_given(flow: Flow) -> None:
    result = await group(flow.mul.s(i, 10) for i in range(8)).aapply_async()
    assert isinstance(result, GroupResult)
    assert await result.aget(timeout=T) == [i * 10 for i in range(8)]
    assert await result.aready()
    assert await result.acompleted_count() == 8
    landed = [value async for _, value in result.acollect(timeout=T)]
    assert sorted(landed) == [i * 10 for i in range(8)]


async def test_chord_body_gets_the_header_results_in_header_order(flow: Flow) -> None:
    result = await chord([flow.mul.s(i, 2) for i in range(6)], flow.listed.s()).aapply_async()
    assert await result.aget(timeout=T) == [0, 2, 4, 6, 8, 10]


async def test_link_sends_the_callback_with_the_result(flow: Flow) -> None:
    first = await flow.add.s(2, 3).aapply_async(link=flow.record.s("linked"))
    assert await first.aget(timeout=T) == 5
    for _ in range(200):
        if flow.log:
            break
        await asyncio.sleep(0.05)
    assert flow.log == [[5, "linked"]]


async def test_failing_step_stops_the_chain_runs_link_error_and_fails_its_result(
    flow: Flow,
) -> None:
    result = await (flow.add.s(1, 2) | flow.boom.s() | flow.record.s("never")).aapply_async(
        link_error=flow.record.si("errback")
    )
    with pytest.raises(ValueError, match=r"boom with \[3\]"):
        await result.aget(timeout=T)
    for _ in range(200):
        if flow.log:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert flow.log == [["errback"]]


async def test_link_error_gets_the_failed_task_id(flow: Flow) -> None:
    result = await flow.boom.s(1).aapply_async(link_error=flow.record.s())
    with pytest.raises(ValueError, match="boom with"):
        await result.aget(timeout=T)
    for _ in range(200):
        if flow.log:
            break
        await asyncio.sleep(0.05)
    assert flow.log == [[result.id]]


async def test_failing_header_fails_the_chord_naming_that_task_and_skips_the_body(
    flow: Flow,
) -> None:
    failing = flow.boom.s(7).set(task_id="failing-header-task")
    result = await chord([flow.add.s(1, 1), failing], flow.record.s("body")).aapply_async()
    with pytest.raises(ChordError, match="failing-header-task"):
        await result.aget(timeout=T)
    await asyncio.sleep(0.3)
    assert flow.log == []


async def test_chain_inside_a_chord_header(flow: Flow) -> None:
    header = [flow.add.s(1, 1) | flow.mul.s(10), flow.add.s(2, 2)]
    result = await chord(header, flow.listed.s()).aapply_async()
    assert await result.aget(timeout=T) == [20, 4]


async def test_group_inside_a_chain_becomes_a_chord_with_the_next_step(flow: Flow) -> None:
    workflow = flow.add.s(1, 1) | group(flow.mul.s(2), flow.mul.s(3)) | flow.listed.s()
    result = await workflow.aapply_async()
    assert await result.aget(timeout=T) == [4, 6]


async def test_chord_inside_a_chain_continues_after_the_body(flow: Flow) -> None:
    workflow = (
        flow.add.s(1, 2) | chord([flow.mul.s(2), flow.mul.s(3)], flow.tsum.s()) | (flow.add.s(100))
    )
    result = await workflow.aapply_async()
    assert await result.aget(timeout=T) == 115


async def test_signature_by_name_needs_no_code(flow: Flow) -> None:
    sig = flow.app.signature("wf.add", (20, 22))
    result = await sig.aapply_async()
    assert await result.aget(timeout=T) == 42


async def test_empty_chord_header_sends_the_body_an_empty_list(flow: Flow) -> None:
    result = await chord([], flow.listed.s()).aapply_async()
    assert await result.aget(timeout=T) == []


async def test_an_expired_header_task_fails_the_chord(flow: Flow) -> None:
    past = datetime.now(UTC) - timedelta(seconds=5)
    expired = flow.add.s(1, 1).set(expires=past, task_id="expired-header-task")
    result = await chord([flow.add.s(2, 2), expired], flow.record.s("body")).aapply_async()
    with pytest.raises(ChordError, match="expired-header-task"):
        await result.aget(timeout=T)
    assert flow.log == []


async def test_sync_api_sends_workflows_and_reads_their_results(flow: Flow) -> None:
    def run() -> tuple[int, list[int], int, list[int]]:
        chained = (flow.add.s(1, 1) | flow.mul.s(5)).apply_async()
        fanned = group(flow.add.s(i, 1) for i in range(3)).apply_async()
        joined = chord([flow.add.s(1, 1), flow.add.s(2, 2)], flow.tsum.s()).delay()
        delayed = flow.add.s(40).delay(2)
        try:
            return (
                chained.get(timeout=T),
                fanned.get(timeout=T),
                joined.get(timeout=T),
                [delayed.get(timeout=T), fanned.completed_count()],
            )
        finally:
            flow.app.close()

    assert await asyncio.to_thread(run) == (10, [1, 2, 3], 6, [42, 3])


def test_signatures_serialize_as_celery_dicts_and_back() -> None:
    app = App("ser", broker="memory://ser")
    sig = app.signature("wf.add", (1,)).set(queue="q", countdown=2)
    sig.link(app.signature("wf.record", ("ok",)))
    workflow = chord(
        [sig, app.signature("wf.mul", (2, 3), immutable=True)], app.signature("wf.tsum")
    )
    wire = orjson.loads(orjson.dumps(workflow))
    assert wire["task"] == "celery.chord"
    assert wire["subtask_type"] == "chord"
    header = wire["kwargs"]["header"]
    assert header["subtask_type"] == "group"
    first = header["kwargs"]["tasks"][0]
    assert first == {
        "task": "wf.add",
        "args": [1],
        "kwargs": {},
        "options": {
            "queue": "q",
            "countdown": 2,
            "link": [
                {
                    "task": "wf.record",
                    "args": ["ok"],
                    "kwargs": {},
                    "options": {},
                    "subtask_type": None,
                    "immutable": False,
                    "chord_size": None,
                }
            ],
        },
        "subtask_type": None,
        "immutable": False,
        "chord_size": None,
    }
    back = signature(wire, app=app)
    assert isinstance(back, chord)
    assert back.header.tasks[1].immutable
    assert back.body.name == "wf.tsum"
    assert back == workflow


async def test_group_get_raises_the_first_failure_or_returns_it_in_place(flow: Flow) -> None:
    result = await group(flow.add.s(1, 1), flow.boom.s(2), flow.add.s(3, 3)).aapply_async()
    with pytest.raises(ValueError, match=r"boom with \[2\]"):
        await result.aget(timeout=T)
    values = await result.aget(timeout=T, propagate=False)
    assert values[0] == 2
    assert isinstance(values[1], ValueError)
    assert values[2] == 6
    assert await result.afailed()
    assert await result.acompleted_count() == 2


async def test_a_signature_reused_in_two_workflows_runs_in_each(flow: Flow) -> None:
    double = flow.mul.s(2)
    first = await (flow.add.s(1, 1) | double).aapply_async()
    second = await (flow.add.s(2, 2) | double).aapply_async()
    assert first.id != second.id
    assert double.id is None
    assert (await first.aget(timeout=T), await second.aget(timeout=T)) == (4, 8)


async def test_a_signature_can_be_a_task_argument(flow: Flow) -> None:
    forwarded = await flow.forward.s(flow.mul.s(7), 6).aapply_async()
    sent_id = await forwarded.aget(timeout=T)
    assert await flow.app.result(sent_id).aget(timeout=T) == 42


async def test_chain_and_group_with_rpc_results_on_rabbitmq(rabbitmq_url: str) -> None:
    queue = f"wf-rpc-{uuid.uuid4().hex[:12]}"
    app = App("rpc", broker=rabbitmq_url, result_backend="rpc://")
    app.conf.task_default_queue = queue
    tasks = define(app, [])
    worker = Worker(app, concurrency=4)
    await worker.start()
    try:
        chained = await (tasks["add"].s(1, 2) | tasks["mul"].s(5)).aapply_async()
        fanned = await group(tasks["add"].s(i, i) for i in range(4)).aapply_async()
        assert await chained.aget(timeout=T) == 15
        assert await fanned.aget(timeout=T) == [0, 2, 4, 6]
    finally:
        await worker.stop()
        cleanup = App(broker=rabbitmq_url)
        await (await cleanup.atransport()).delete_queue(queue)
        await cleanup.aclose()


def test_an_option_that_is_not_a_send_option_is_a_warning_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from conveyor.canvas.signatures import send_options

    options = send_options({"queu": "q", "countdown": 3, "stamps": {}})
    assert options.countdown == 3
    assert options.queue is None
    assert [r.getMessage() for r in caplog.records if "queu" in r.getMessage()] == [
        "signature option 'queu' is not a send option and is ignored; the send options are: "
        + ", ".join(SEND_OPTION_NAMES)
    ]
    assert not any("stamps" in r.getMessage() for r in caplog.records)


async def test_group_inside_a_chord_header_is_flattened_into_the_body_list(flow: Flow) -> None:
    header = [flow.add.s(1, 1), group(flow.mul.s(5, 5), flow.mul.s(6, 6))]
    result = await chord(header, flow.listed.s()).aapply_async()
    values = await result.aget(timeout=T)
    assert values[0] == 2
    assert sorted(values[1:]) == [25, 36]
