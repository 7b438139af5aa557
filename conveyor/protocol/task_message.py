"""Task messages in the Celery task message protocol, version 2, inside an :class:`Envelope`.

The body is ``[args, kwargs, embed]`` (JSON by default); everything a worker needs to decide what
to do without decoding the body travels in headers: always ``lang``, ``task``, ``id``, ``root_id``,
``parent_id``, ``group`` (the headers the protocol requires), ``origin`` and ``ignore_result``; the
optional ``group_index`` (a chord header's place), ``retries``, ``eta``, ``expires``,
``timelimit``, ``shadow``, ``argsrepr`` and ``kwargsrepr`` only when they differ from what a reader
takes for a missing one (0, none, none, no limits, none, no args, no kwargs), as both Celery's
worker and conveyor's read them. Every header entry costs RabbitMQ CPU on each publish and delivery
(~1 µs each), and a task's headers are most of its size. The ``correlation_id`` property is the
task id and ``reply_to`` names the caller's reply queue. A Celery 5 client can send to a conveyor
worker and a conveyor client to a Celery worker. (Celery's documentation calls ``timelimit``
``(soft, hard)``; its code writes and reads ``[hard, soft]``, and so does conveyor.)

Decoding also accepts protocol version 1 messages (everything in a JSON body), which older
Celery clients send. Pickle bodies are refused unless ``"pickle"`` is in the accepted content
types: unpickling runs arbitrary code from whoever could publish to the queue.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from conveyor._frozen import fast_init
from conveyor.errors import ProtocolError
from conveyor.protocol.describe import brief
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import FrozenMapping

__all__ = [
    "CONTENT_TYPES",
    "MAX_RETRIES",
    "STANDARD_HEADERS",
    "TaskMessage",
    "decode_task",
    "dumps",
    "encode_new_task",
    "encode_task",
    "loads",
    "parse_time",
]

JSON = "application/json"
PICKLE = "application/x-python-serialize"
# serializer name -> (content type, content encoding)
CONTENT_TYPES: dict[str, tuple[str, str]] = {"json": (JSON, "utf-8"), "pickle": (PICKLE, "binary")}
_NAMES = {ct: name for name, (ct, _) in CONTENT_TYPES.items()}
_REPR_LIMIT = 1024
# A retry count past any real one: a message claiming more is refused, not backed off from.
MAX_RETRIES = 2**31 - 1
_NO_TIMELIMIT = [None, None]
_NO_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
STANDARD_HEADERS = _STANDARD_HEADERS = frozenset(
    {
        "lang",
        "task",
        "id",
        "root_id",
        "parent_id",
        "group",
        "group_index",
        "meth",
        "shadow",
        "eta",
        "expires",
        "retries",
        "timelimit",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
    }
)


@lru_cache(maxsize=1)
def default_origin() -> str:
    """``pid@hostname``: who sent a message, as Celery writes it."""
    return f"{os.getpid()}@{socket.gethostname()}"


def dumps(value: Any, serializer: str = "json") -> tuple[bytes, str, str]:
    """Serialize ``value``; return ``(body, content_type, content_encoding)``.

    Raises ProtocolError for an unknown serializer or a value it cannot encode.
    """
    if serializer == "json":
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS), JSON, "utf-8"
        except TypeError as exc:
            raise ProtocolError(
                f"cannot encode task arguments as JSON: {exc}; pass only JSON values "
                "(str, int, float, bool, None, lists and dicts of these)"
            ) from exc
    if serializer == "pickle":
        return pickle.dumps(value, protocol=4), PICKLE, "binary"
    known = ", ".join(sorted(CONTENT_TYPES))
    raise ProtocolError(f"unknown serializer {serializer!r}: use one of {known}")


def loads(body: bytes, content_type: str, accept: Collection[str] = ("json",)) -> Any:
    """Deserialize ``body`` of ``content_type`` if its serializer is in ``accept``.

    Raises ProtocolError when the content type is unknown or not accepted, or the body is bad.
    """
    name = _NAMES.get(content_type) if type(content_type) is str else None
    if name is None:
        raise ProtocolError(
            f"unsupported content type {brief(content_type)}: conveyor reads {', '.join(_NAMES)}"
        )
    if name not in accept:
        raise ProtocolError(
            f"refusing a {name} message (content type {brief(content_type)}): only "
            f"{', '.join(accept) or 'nothing'} is accepted; add {name!r} to accept_content "
            "only if every sender is trusted"
        )
    if name == "json":
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"message body is not valid JSON: {exc}") from exc
    try:
        return pickle.loads(body)
    except Exception as exc:
        raise ProtocolError(f"message body is not a valid pickle: {exc}") from exc


def parse_time(value: Any, what: str) -> datetime | None:
    """An ISO 8601 header value (or epoch seconds) as an aware datetime; None stays None.

    Naive times are taken as UTC, as Celery with ``enable_utc`` writes them.
    Raises ProtocolError for anything else, and for a time out of datetime's range (years
    1..9999) or one whose epoch seconds the platform cannot hold: the worker compares both.
    """
    if value is None:
        return None
    try:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parsed = datetime.fromtimestamp(value, UTC)
        elif isinstance(value, str):
            parsed = datetime.fromisoformat(value)
        else:
            raise ProtocolError(f"header {what!r} is not a time: {brief(value)}")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed.timestamp()  # out of range (a far year with an offset) raises here, not later
    except (ValueError, OverflowError, OSError) as exc:
        raise ProtocolError(
            f"header {what!r} is not a time conveyor can use: {brief(value)} ({exc}); send "
            "an ISO 8601 time or epoch seconds within the years 1..9999"
        ) from exc
    return parsed


def _opt_str(headers: Mapping[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"header {key!r} must be a string, got {brief(value)}")
    return value


def _timelimit(value: Any) -> tuple[float | None, float | None]:
    if value is None or value == _NO_TIMELIMIT:
        return (None, None)
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(v is None or type(v) in (int, float) for v in value)
    ):
        return (value[0], value[1])
    raise ProtocolError(f"header 'timelimit' must be [soft, hard] seconds, got {brief(value)}")


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


@fast_init
@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One request to run task ``task`` with ``args`` and ``kwargs``.

    ``eta``: do not run before this time; ``expires``: do not run after it (the task is marked
    REVOKED instead). ``timelimit`` is ``(hard, soft)`` seconds, in the order Celery writes it.
    ``headers`` holds any other headers, carried through untouched. ``priority`` becomes the
    envelope's priority.
    """

    task: str
    id: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    embed: Mapping[str, Any] | None = None
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    origin: str | None = None
    shadow: str | None = None
    ignore_result: bool = False
    reply_to: str | None = None
    correlation_id: str | None = None
    priority: int | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    group_index: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ProtocolError(f"task name must be a non-empty string, got {brief(self.task)}")
        if not isinstance(self.id, str) or not self.id:
            raise ProtocolError(f"task id must be a non-empty string, got {brief(self.id)}")
        args: Any = self.args  # a list, as decoded from JSON, is made a tuple here
        if type(args) is not tuple:
            if type(args) is not list and (
                isinstance(args, (str, bytes)) or not isinstance(args, Sequence)
            ):
                raise ProtocolError(f"task args must be a list, got {type(args).__name__}")
            object.__setattr__(self, "args", tuple(args))
        kwargs = self.kwargs
        if (type(kwargs) is not dict and not isinstance(kwargs, Mapping)) or not all(
            isinstance(k, str) for k in kwargs
        ):
            raise ProtocolError(f"task kwargs must be a dict with string keys, got {brief(kwargs)}")
        retries = self.retries
        if type(retries) is not int and (isinstance(retries, bool) or not isinstance(retries, int)):
            raise ProtocolError(f"retries must be a non-negative integer, got {brief(retries)}")
        if not 0 <= retries <= MAX_RETRIES:
            raise ProtocolError(
                f"retries must be an integer 0..{MAX_RETRIES}, got {brief(retries)}"
            )


def encode_task(message: TaskMessage, serializer: str = "json") -> Envelope:
    """Encode ``message`` as a protocol v2 envelope.

    Raises ProtocolError when the arguments cannot be serialized or a header is not a JSON value.
    """
    m = message
    # In the order of TaskMessage's fields.
    return _encode(
        m.task,
        m.id,
        m.args,
        m.kwargs,
        given_embed=m.embed,
        retries=m.retries,
        eta=m.eta,
        expires=m.expires,
        timelimit=m.timelimit,
        root_id=m.root_id,
        parent_id=m.parent_id,
        group=m.group,
        origin=m.origin,
        shadow=m.shadow,
        ignore_result=m.ignore_result,
        reply_to=m.reply_to,
        correlation_id=m.correlation_id,
        priority=m.priority,
        given_headers=m.headers,
        group_index=m.group_index,
        serializer=serializer,
    )


def encode_new_task(
    task: str,
    task_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    root_id: str,
    parent_id: str | None,
    ignore_result: bool,
    reply_to: str | None,
    priority: int | None,
    eta: datetime | None,
    expires: datetime | None,
    time_limit: float | None,
    headers: Mapping[str, Any] | None,
    serializer: str,
) -> Envelope:
    """What ``encode_task(TaskMessage(...))`` returns for a message with these fields and no
    embed, group, retries, origin or shadow (a plain send's), without building the
    TaskMessage; raises as they would."""
    if (
        type(task) is not str
        or not task
        or type(task_id) is not str
        or not task_id
        or type(args) is not tuple
        or type(kwargs) is not dict
        or not all(type(key) is str for key in kwargs)
    ):
        # Anything unusual is checked (and args made a tuple) as TaskMessage checks it, which
        # says what is wrong with it; the other fields TaskMessage takes as they are.
        message = TaskMessage(task=task, id=task_id, args=args, kwargs=kwargs)
        args, kwargs = message.args, dict(message.kwargs)
    return _encode(
        task,
        task_id,
        args,
        kwargs,
        eta=eta,
        expires=expires,
        timelimit=(time_limit, None),
        root_id=root_id,
        parent_id=parent_id,
        ignore_result=ignore_result,
        reply_to=reply_to,
        priority=priority,
        given_headers=headers,
        serializer=serializer,
    )


def _encode(
    task: str,
    task_id: str,
    args: tuple[Any, ...],
    given_kwargs: Mapping[str, Any],
    *,
    given_embed: Mapping[str, Any] | None = None,
    retries: int = 0,
    eta: datetime | None,
    expires: datetime | None,
    timelimit: tuple[float | None, float | None],
    root_id: str | None,
    parent_id: str | None,
    group: str | None = None,
    origin: str | None = None,
    shadow: str | None = None,
    ignore_result: bool,
    reply_to: str | None,
    correlation_id: str | None = None,
    priority: int | None,
    given_headers: Mapping[str, Any] | None,
    group_index: int | None = None,
    serializer: str,
) -> Envelope:
    """:func:`encode_task` of a message's fields (see the module docstring for the headers).

    The keywords stand in the order of TaskMessage's fields, then the serializer. Those every
    send sets are required; those only a retry, a workflow or a message built by hand sets
    (embed, retries, group, origin, shadow, correlation id, group index) default to what a
    plain send writes, so a caller names only what it sets.
    """
    kwargs = given_kwargs if type(given_kwargs) is dict else dict(given_kwargs)
    embed = dict(given_embed) if given_embed is not None else _NO_EMBED
    body, content_type, encoding = dumps((args, kwargs, embed), serializer)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "group": group,
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "origin": origin or default_origin(),
        "ignore_result": ignore_result,
    }
    # The optional headers, only when a reader would not assume them (see the module's text).
    if retries:
        headers["retries"] = retries
    if eta is not None:
        headers["eta"] = eta.isoformat()
    if expires is not None:
        headers["expires"] = expires.isoformat()
    if timelimit != (None, None):
        headers["timelimit"] = list(timelimit)
    if shadow is not None:
        headers["shadow"] = shadow
    if group_index is not None:
        headers["group_index"] = group_index
    if args:
        headers["argsrepr"] = _short_repr(args)
    if kwargs:
        headers["kwargsrepr"] = _short_repr(kwargs)
    if given_headers:
        # Custom headers first, as before: the standard ones are written after them.
        custom = {k: v for k, v in given_headers.items() if k not in _STANDARD_HEADERS}
        headers = {**custom, **headers}
    return Envelope(
        body=body,
        headers=headers,
        content_type=content_type,
        content_encoding=encoding,
        correlation_id=correlation_id or task_id,
        reply_to=reply_to,
        priority=priority,
    )


def _decode_v1(body: Mapping[str, Any], envelope: Envelope) -> TaskMessage:
    """A protocol v1 message: every field in the (JSON object) body; TaskMessage checks them."""
    if "task" not in body or "id" not in body:
        raise ProtocolError("message has no 'task' header and its body names no task")
    return TaskMessage(
        task=body["task"],
        id=body["id"],
        args=body.get("args") or (),
        kwargs=body.get("kwargs") or {},
        retries=body.get("retries") or 0,
        eta=parse_time(body.get("eta"), "eta"),
        expires=parse_time(body.get("expires"), "expires"),
        timelimit=_timelimit(body.get("timelimit")),
        group=_opt_str(body, "taskset"),
        reply_to=envelope.reply_to,
        correlation_id=envelope.correlation_id,
        priority=envelope.priority,
    )


def decode_task(envelope: Envelope, accept: Collection[str] = ("json",)) -> TaskMessage:
    """Decode a task message (protocol v2, or v1) from ``envelope``.

    Raises ProtocolError saying what is wrong: a refused or unknown content type, a bad body,
    a missing task name or id, a malformed header.
    """
    body = loads(envelope.body, envelope.content_type, accept)
    # A plain dict: FrozenMapping's get() and items() go through the Mapping mixins.
    given = envelope.headers
    headers = given.to_dict() if type(given) is FrozenMapping else dict(given)
    if "task" not in headers:
        if isinstance(body, Mapping):
            return _decode_v1(body, envelope)
        raise ProtocolError("message has no 'task' header: it is not a task message")
    if not (isinstance(body, (list, tuple)) and len(body) == 3):
        raise ProtocolError(
            f"task message body must be [args, kwargs, embed], got {type(body).__name__}"
        )
    args, kwargs, embed = body
    if embed is not None and type(embed) is not dict and not isinstance(embed, Mapping):
        raise ProtocolError(f"task message embed must be a dict or null, got {brief(embed)}")
    task_id: Any = headers.get("id") or envelope.correlation_id
    retries = headers.get("retries") or 0
    eta = headers.get("eta")
    expires = headers.get("expires")
    timelimit = headers.get("timelimit")
    group_index = headers.get("group_index")
    if group_index is not None and (type(group_index) is not int):
        raise ProtocolError(f"header 'group_index' must be an integer, got {group_index!r}")
    return TaskMessage(
        task=headers["task"],
        id=task_id,
        args=args,
        kwargs=kwargs,
        embed=embed,
        retries=retries,
        eta=None if eta is None else parse_time(eta, "eta"),
        expires=None if expires is None else parse_time(expires, "expires"),
        timelimit=(None, None) if timelimit is None else _timelimit(timelimit),
        root_id=_opt_str(headers, "root_id"),
        parent_id=_opt_str(headers, "parent_id"),
        group=_opt_str(headers, "group"),
        origin=_opt_str(headers, "origin"),
        shadow=_opt_str(headers, "shadow"),
        ignore_result=bool(headers.get("ignore_result", False)),
        reply_to=envelope.reply_to,
        correlation_id=envelope.correlation_id,
        priority=envelope.priority,
        headers=(
            {}
            if _STANDARD_HEADERS.issuperset(headers)
            else {k: v for k, v in headers.items() if k not in _STANDARD_HEADERS}
        ),
        group_index=group_index,
    )
