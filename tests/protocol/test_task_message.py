"""Task messages: protocol v2 encoding, decoding, and interoperation with Celery 5."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from celery.app.task import Context as CeleryContext
from celery.worker.request import Request as CeleryRequest
from kombu import Message as KombuMessage
from kombu.serialization import dumps as kombu_dumps
from kombu.serialization import loads as kombu_loads

from conveyor.errors import ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.task_message import TaskMessage, decode_task, encode_task

CELERY = Celery("interop", set_as_current=False)


@CELERY.task(name="proj.add")
def _celery_add(x: int, y: int) -> int:
    return x + y


CELERY_ADD = CELERY.tasks["proj.add"]


def test_round_trip_keeps_every_field() -> None:
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    msg = TaskMessage(
        task="remote.transcode",
        id="t-1",
        args=(1, "two"),
        kwargs={"path": "/a.mp4"},
        retries=2,
        eta=eta,
        expires=eta + timedelta(hours=1),
        timelimit=(10.0, None),
        parent_id="p",
        root_id="r",
        reply_to="reply.q",
        priority=7,
        ignore_result=True,
        headers={"x-tenant": "acme"},
    )
    env = encode_task(msg)
    assert env.correlation_id == "t-1"
    assert env.headers["task"] == "remote.transcode"
    assert env.priority == 7
    back = decode_task(Envelope.from_bytes(env.to_bytes()))
    assert back.args == (1, "two")
    assert back.kwargs == {"path": "/a.mp4"}
    assert (back.retries, back.eta, back.expires) == (2, eta, eta + timedelta(hours=1))
    assert back.timelimit == (10.0, None)
    assert (back.parent_id, back.root_id, back.reply_to) == ("p", "r", "reply.q")
    assert back.ignore_result is True
    assert back.headers == {"x-tenant": "acme"}


def test_celery_client_message_decodes() -> None:
    tm = CELERY.amqp.as_task_v2(
        "abc", "proj.add", args=(1, 2), kwargs={"a": 1}, countdown=10, time_limit=5
    )
    content_type, encoding, body = kombu_dumps(tm.body, serializer="json")
    env = Envelope(
        body=body.encode() if isinstance(body, str) else body,
        headers=tm.headers,
        content_type=content_type,
        content_encoding=encoding,
        correlation_id=tm.properties["correlation_id"],
    )
    msg = decode_task(env)
    assert (msg.task, msg.id, msg.args, dict(msg.kwargs)) == ("proj.add", "abc", (1, 2), {"a": 1})
    assert msg.eta is not None
    assert msg.eta > datetime.now(UTC)
    assert msg.timelimit == (5, None)


def test_conveyor_message_reads_like_celery_v2() -> None:
    env = encode_task(TaskMessage(task="proj.add", id="x", args=(2, 2)))
    args, kwargs, embed = kombu_loads(env.body, env.content_type, env.content_encoding)
    assert (args, kwargs) == ([2, 2], {})
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}
    # The headers the protocol requires, always; optional ones left at their default are not
    # written, and Celery's worker reads them as their defaults.
    assert set(env.headers) == {
        *("lang", "task", "id", "root_id", "parent_id", "group", "origin", "ignore_result"),
        "argsrepr",
    }
    request = CeleryRequest(
        KombuMessage(
            body=env.body,
            headers=dict(env.headers),
            content_type=env.content_type,
            content_encoding=env.content_encoding,
            properties={"correlation_id": env.correlation_id},
        ),
        app=CELERY,
        task=CELERY_ADD,
        hostname="worker@test",
    )
    assert (request.id, request.name, request.args, request.kwargs) == ("x", "proj.add", [2, 2], {})
    assert (request.eta, request.expires, request.time_limits) == (None, None, (None, None))
    assert CeleryContext(request.request_dict).retries == 0


def test_optional_headers_are_written_when_they_say_something() -> None:
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    env = encode_task(
        TaskMessage(
            task="proj.add",
            id="x",
            kwargs={"a": 1},
            retries=3,
            eta=eta,
            expires=eta,
            timelimit=(None, 5.0),
            shadow="alias",
        )
    )
    headers = env.headers
    assert (headers["retries"], headers["eta"], headers["expires"]) == (
        3,
        eta.isoformat(),
        eta.isoformat(),
    )
    assert (headers["timelimit"], headers["shadow"], headers["kwargsrepr"]) == (
        [None, 5.0],
        "alias",
        "{'a': 1}",
    )
    assert "argsrepr" not in headers
    back = decode_task(env)
    assert (back.retries, back.eta, back.timelimit, back.shadow) == (3, eta, (None, 5.0), "alias")


def test_protocol_v1_body_decodes() -> None:
    env = Envelope(body=b'{"task": "old.t", "id": "1", "args": [1], "kwargs": {}}')
    msg = decode_task(env)
    assert (msg.task, msg.id, msg.args) == ("old.t", "1", (1,))


def test_pickle_is_refused_unless_accepted_by_name() -> None:
    env = Envelope(
        body=pickle.dumps(((1,), {}, None)),
        headers={"task": "t", "id": "1"},
        content_type="application/x-python-serialize",
        content_encoding="binary",
    )
    with pytest.raises(ProtocolError, match="refusing a pickle message"):
        decode_task(env)
    assert decode_task(env, accept=("json", "pickle")).args == (1,)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (Envelope(body=b"{not json", headers={"task": "t", "id": "1"}), "not valid JSON"),
        (Envelope(body=b"[1, 2]", headers={"task": "t", "id": "1"}), r"\[args, kwargs, embed\]"),
        (Envelope(body=b"[[], {}, null]"), "no 'task' header"),
        (Envelope(body=b"[[], {}, null]", headers={"task": "t"}), "task id"),
        (Envelope(body=b"[[], {}, null]", content_type="text/plain"), "unsupported content"),
        (
            Envelope(body=b"[[], {}, null]", headers={"task": "t", "id": "1", "eta": "soon"}),
            "ISO 8601",
        ),
    ],
)
def test_bad_messages_raise_protocol_error(env: Envelope, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_task(env)


def test_unencodable_arguments_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="JSON"):
        encode_task(TaskMessage(task="t", id="1", args=(object(),)))
