"""The admin shell's verbs and answers on SQLite, Redis and RabbitMQ, without a terminal."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Callable

import pytest

from conveyor.cli.amqp_shell import OK, REFUSED, USAGE, AMQPShell, Answer
from conveyor.transports import open_transport


@pytest.fixture
async def shell(broker_url: str) -> AsyncIterator[AMQPShell]:
    transport = open_transport(broker_url)
    await transport.connect()
    yield AMQPShell(transport)
    await transport.close()


async def say(shell: AMQPShell, line: str) -> Answer:
    answer = await shell.run_line(line)
    assert answer is not None
    return answer


async def test_the_guides_session(
    shell: AMQPShell, names: Callable[[str], str], forget: list[str]
) -> None:
    ex, q = names("testexchange"), names("testqueue")
    forget += [q, ex]
    assert (await say(shell, f"exchange.declare {ex} direct")).text == "ok."
    declared = await say(shell, f"queue.declare {q}")
    assert declared.text == f"ok. queue:{q} messages:0 consumers:0."
    assert declared.data == {"verb": "queue.declare", "queue": q, "messages": 0, "consumers": 0}
    assert (await say(shell, f"queue.bind {q} {ex} testkey")).text == "ok."
    assert (await say(shell, f"basic.publish 'This is a message!' {ex} testkey")).text == "ok."
    got = await say(shell, f"basic.get {q}")
    message = ast.literal_eval(got.text)
    assert message["body"] == "This is a message!"
    assert message["delivery_info"] == {
        "delivery_tag": 1,
        "exchange": ex,
        "message_count": 0,
        "redelivered": False,
        "routing_key": "testkey",
    }
    assert set(message["properties"]) <= {"message_id"}  # RabbitMQ's transport numbers messages
    assert (await say(shell, "basic.ack 1")).text == "ok."
    assert (await say(shell, f"queue.delete {q}")).text == "ok. 0 messages deleted."
    assert (await say(shell, f"exchange.delete {ex}")).text == "ok."
    assert await shell.run_line("   ") is None


async def test_arguments_properties_and_headers(
    shell: AMQPShell, names: Callable[[str], str], forget: list[str]
) -> None:
    q, hq, hx = names("prio"), names("pdfs"), names("docs")
    forget += [q, hq, hx]
    assert (await say(shell, f"queue.declare {q} x-max-priority=10")).ok
    for body, priority in (("low", 1), ("high", 9)):
        line = f"basic.publish {body} '' {q} priority={priority} expiration=60 trace=abc"
        assert (await say(shell, line)).ok
    first = ast.literal_eval((await say(shell, f"basic.get {q} no_ack")).text)
    assert first["body"] == "high"
    assert first["delivery_info"]["message_count"] == 1
    assert first["properties"]["priority"] == 9
    assert first["properties"]["expiration"] == 60
    assert first["properties"]["headers"]["trace"] == "abc"
    assert (await say(shell, f"exchange.declare {hx} headers")).ok
    assert (await say(shell, f"queue.declare {hq}")).ok
    assert (await say(shell, f"queue.bind {hq} {hx} '' x-match=all format=pdf")).ok
    assert (await say(shell, f"basic.publish doc {hx} '' format=pdf")).text == "ok."
    dropped = await say(shell, f"basic.publish doc {hx} '' format=png")
    assert dropped.text == "ok. (no queue took it: the message was dropped)"
    assert (await say(shell, f"queue.unbind {hq} {hx} '' x-match=all format=pdf")).ok
    assert (await say(shell, f"basic.publish doc {hx} '' format=pdf")).data["routed"] is False
    assert (await say(shell, f"queue.purge {hq}")).text == "ok. 1 messages deleted."


async def test_reject_requeue_and_tags_for_the_whole_session(
    shell: AMQPShell, names: Callable[[str], str], forget: list[str]
) -> None:
    q = names("q")
    forget.append(q)
    await say(shell, f"queue.declare {q}")
    await say(shell, f"basic.publish one '' {q}")
    await say(shell, f"basic.publish two '' {q}")
    assert "'delivery_tag': 1" in (await say(shell, f"basic.get {q}")).text
    assert "'delivery_tag': 2" in (await say(shell, f"basic.get {q}")).text
    assert (await say(shell, "basic.reject 1 requeue")).text == "ok."
    again = ast.literal_eval((await say(shell, f"basic.get {q}")).text)
    assert again["body"] == "one"
    assert again["delivery_info"]["delivery_tag"] == 3
    assert again["delivery_info"]["redelivered"] is True
    assert (await say(shell, "basic.ack 2")).ok
    assert (await say(shell, "basic.reject 3")).ok
    assert (await say(shell, f"queue.declare {q} passive")).data["messages"] == 0


async def test_refusals_keep_the_session_and_its_deliveries(
    shell: AMQPShell, names: Callable[[str], str], forget: list[str]
) -> None:
    q, missing, ex = names("q"), names("missing"), names("ex")
    forget += [q, ex]
    await say(shell, f"queue.declare {q}")
    await say(shell, f"basic.publish held '' {q}")
    assert "'delivery_tag': 1" in (await say(shell, f"basic.get {q}")).text
    refusals = {
        f"queue.declare {q} x-max-priority=10": "PreconditionFailed",
        f"queue.declare {q} durable": "PreconditionFailed",
        f"queue.delete {missing}": "NotFound",
        f"queue.purge {missing}": "NotFound",
        f"basic.get {missing}": "NotFound",
        f"queue.declare {missing} passive": "NotFound",
        f"exchange.delete {missing}": "NotFound",
        f"queue.bind {q} {missing} key": "NotFound",
        f"basic.publish x {missing} key": "NotFound",
        f"basic.publish x '' {missing} mandatory": "Unroutable",
        "basic.ack 7": "NotFound",
    }
    for line, kind in refusals.items():
        answer = await say(shell, line)
        assert answer.status == REFUSED, line
        assert answer.data["error_kind"] == kind, (line, answer.text)
        assert answer.text.startswith("error: ")
        assert "Traceback" not in answer.text
    await say(shell, f"exchange.declare {ex} topic")
    redeclared = await say(shell, f"exchange.declare {ex} fanout")
    assert redeclared.data["error_kind"] == "PreconditionFailed"
    # The message got before the refusals is still held, under the same tag.
    assert (await say(shell, f"queue.declare {q} passive")).data["messages"] == 0
    assert (await say(shell, "basic.ack 1")).status == OK
    assert "already settled" in (await say(shell, "basic.ack 1")).text


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("queue.bind onlyqueue", "usage: queue.bind QUEUE EXCHANGE [ROUTING_KEY] [ARG=VALUE...]"),
        ("basic.publish 'no exchange'", "usage: basic.publish BODY EXCHANGE ROUTING_KEY"),
        ("exchange.declare ex sideways", "unknown exchange type 'sideways'"),
        ("basic.publish x '' q priority=300", "priority must be an integer 0..255"),
        ("basic.publish x '' q priority=high", "priority must be a number"),
        ("basic.ack one", "TAG must be a number"),
        ("queue.declare q x-max-priority=999", "x-max-priority must be in 0..255"),
        ("basic.get q later", "basic.get does not take 'later'"),
        ("help frob", "unknown verb 'frob'"),
        ("frob", "unknown verb 'frob': type help"),
        ("basic.publish 'unclosed", "cannot read that line"),
    ],
)
@pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)
async def test_wrong_arguments_print_the_usage(shell: AMQPShell, line: str, usage: str) -> None:
    answer = await say(shell, line)
    assert answer.status == USAGE
    assert usage in answer.text
    assert answer.data["error_kind"] == "usage"


@pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)
async def test_help_lists_every_verb(shell: AMQPShell) -> None:
    listing = (await say(shell, "help")).text
    for verb in ("exchange.declare", "queue.unbind", "basic.reject", "help"):
        assert verb in listing
    one = await say(shell, "help queue.declare")
    assert one.text.startswith("queue.declare NAME [passive] [durable] [exclusive] [auto_delete]")


async def test_names_seen_are_remembered(
    shell: AMQPShell, names: Callable[[str], str], forget: list[str]
) -> None:
    q, ex = names("seen"), names("seenx")
    forget += [q, ex]
    await say(shell, f"exchange.declare {ex} fanout")
    await say(shell, f"queue.declare {q}")
    assert q in shell.queues
    assert ex in shell.exchanges
    await say(shell, f"queue.delete {q}")
    assert q not in shell.queues
