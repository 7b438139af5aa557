"""Fuzzing conveyor's own decoders: any input gives a decoded message or ProtocolError.

Whatever bytes a transport hands over and whatever header values a sender chose, decoding
(:meth:`Envelope.from_bytes`, :func:`decode_task`) returns a value or raises ProtocolError, never
another exception and never unbounded recursion; and what it returns the worker can use (its
times have epoch seconds, it encodes again for a retry). The worker dead-letters on ProtocolError,
so this is what keeps a hostile message from holding a prefetch slot.

Each test runs a bounded number of examples (``CONVEYOR_FUZZ_EXAMPLES``, default 100) so that
CI runs them on every change; set it higher for a long run.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.errors import ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.task_message import TaskMessage, decode_task, encode_task
from conveyor.results.meta import ResultMeta

EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e20, -1e15, 1e308, -1e308, 253402300800.0, -62135596801.0, 2**63]),
)
_times = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC])).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59.999999",
            "soon",
            "",
            "2026-13-01",
        ]
    ),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=20), _times)
# Any JSON value, a few levels deep: what a sender can put in a header or a body.
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_HEADER_NAMES = [
    "task",
    "id",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "group",
    "origin",
    "shadow",
    "ignore_result",
    "argsrepr",
    "x-custom",
]
_V1_KEYS = ["task", "id", "args", "kwargs", "eta", "expires", "retries", "timelimit", "taskset"]
_CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/x-python-serialize", "text/plain", "application/data"]
)


_GOOD = {"task": "t", "id": "1"}


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _usable(message: TaskMessage) -> None:
    """What the worker does with a decoded message before running it must not raise."""
    for moment in (message.eta, message.expires):
        if moment is not None:
            assert isinstance(moment.timestamp(), float)
            assert moment.tzinfo is not None
    # A retry or a postponed eta sends it again; ProtocolError would be stored as its FAILURE.
    with contextlib.suppress(ProtocolError):
        encode_task(message)


def _decode(envelope: Envelope) -> None:
    try:
        message = decode_task(envelope)
    except ProtocolError as exc:
        reason = str(exc)  # what goes into the dead-letter headers: there, and short
    else:
        _usable(message)
        return
    assert 0 < len(reason) < 2000


@FUZZ
@given(st.binary(max_size=300))
def test_from_bytes_takes_any_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Envelope.from_bytes(data)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "content_type",
                "content_encoding",
                "correlation_id",
                "reply_to",
                "priority",
                "expiration",
                "message_id",
                "timestamp",
                "type",
                "app_id",
                "delivery_mode",
                "headers",
                "body",
                "surprise",
            ]
        ),
        _json,
        max_size=6,
    ),
    st.binary(max_size=40),
)
def test_from_bytes_takes_any_stored_properties(meta: dict[str, Any], body: bytes) -> None:
    head = orjson.dumps(meta)
    data = struct.pack("!I", len(head)) + head + body
    try:
        envelope = Envelope.from_bytes(data)
    except ProtocolError:
        return
    _decode(envelope)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(_HEADER_NAMES), _json, max_size=8),
    st.one_of(_json, st.tuples(_json, _json, _json).map(list)),
    st.one_of(st.none(), st.text(max_size=10)),
)
def test_decode_task_takes_any_v2_headers_and_body(
    headers: dict[str, Any], body: Any, correlation_id: str | None
) -> None:
    try:
        envelope = Envelope(body=orjson.dumps(body), headers=headers, correlation_id=correlation_id)
    except ProtocolError:
        return
    _decode(envelope)


@FUZZ
@given(st.dictionaries(st.sampled_from(_V1_KEYS), _json, max_size=9))
def test_decode_task_takes_any_v1_body(body: dict[str, Any]) -> None:
    _decode(Envelope(body=orjson.dumps(body)))


@FUZZ
@given(
    st.dictionaries(st.sampled_from(_HEADER_NAMES), _scalars, max_size=6),
    st.binary(max_size=200),
    _CONTENT_TYPES,
)
def test_decode_task_takes_any_body_bytes(
    headers: dict[str, Any], body: bytes, content_type: str
) -> None:
    # Pickle is not in accept: unpickling arbitrary bytes would run whatever they say.
    _decode(Envelope(body=body, headers=headers, content_type=content_type))


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (Envelope(body=b"[[], {}, null]", headers={**_GOOD, "eta": 1e20}), "'eta'"),
        (Envelope(body=b"[[], {}, null]", headers={**_GOOD, "expires": -1e15}), "'expires'"),
        (Envelope(body=orjson.dumps({**_GOOD, "args": 5})), "args must be a list"),
        (Envelope(body=orjson.dumps({**_GOOD, "args": "abc"})), "args must be a list"),
        (Envelope(body=b"[[], {}, null]", headers={**_GOOD, "eta": "2026-13-01"}), "'eta'"),
        (Envelope(body=b"[[], {}, null]", headers={**_GOOD, "retries": 2**40}), "retries"),
        (Envelope(body=orjson.dumps({**_GOOD, "taskset": 5})), "'taskset'"),
        (Envelope(body=b"[[], {}, null]", headers=_GOOD, content_type=["x"]), "content type"),  # type: ignore[arg-type]
    ],
)
def test_the_poison_messages_of_issue_15_are_protocol_errors(
    envelope: Envelope, reason: str
) -> None:
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        decode_task(envelope)


def test_deep_nesting_is_refused_without_recursion_errors() -> None:
    deep = b"[" * 1000 + b"1" + b"]" * 1000  # orjson's own limit is 1024 levels
    message = decode_task(Envelope(body=b"[" + deep + b", {}, null]", headers=_GOOD))
    assert len(message.args) == 1
    too_deep = b"[" * 5000 + b"]" * 5000
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode_task(Envelope(body=too_deep, headers=_GOOD))
    head = b'{"headers": {"h": ' + too_deep + b"}}"
    with pytest.raises(ProtocolError, match="not a conveyor envelope"):
        Envelope.from_bytes(struct.pack("!I", len(head)) + head)
    with pytest.raises(ProtocolError, match="nested more than 32 levels"):
        Envelope(body=b"", headers={"h": _deep(40)})


def test_a_far_but_real_eta_still_decodes() -> None:
    eta = datetime(9999, 12, 31, 12, tzinfo=UTC)
    message = decode_task(
        Envelope(body=b"[[], {}, null]", headers={"task": "t", "id": "1", "eta": eta.isoformat()})
    )
    assert message.eta == eta


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=100),
        st.dictionaries(
            st.sampled_from(
                [
                    "task_id",
                    "status",
                    "result",
                    "traceback",
                    "date_done",
                    "worker",
                    "name",
                    "retries",
                    "signature",
                ]
            ),
            st.one_of(_json, st.sampled_from(["SUCCESS", "FAILURE", "PENDING"])),
            max_size=9,
        ).map(orjson.dumps),
    )
)
def test_result_documents_decode_or_raise_protocol_error(data: bytes) -> None:
    """Results are read back from shared storage too: a bad document is a ProtocolError."""
    try:
        meta = ResultMeta.from_json(data)
    except ProtocolError:
        return
    meta.exception()  # what get() does with a FAILURE: must not raise either
