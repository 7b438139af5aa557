"""What a result backend stores about one task run: its state, value or error, and who ran it.

``ResultMeta`` serializes to the JSON document Celery's backends write (``task_id``, ``status``,
``result``, ``traceback``, ``children``, ``date_done``), plus ``worker``, ``name`` and
``retries``. A failure's ``result`` is ``{"exc_type", "exc_module", "exc_message"}``, the form
Celery uses for JSON, so an error can be rebuilt as its own type on the caller's side.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from conveyor.errors import ProtocolError, RemoteTaskError, TaskRevoked
from conveyor.results.celery_errors import celery_name, conveyor_type

__all__ = [
    "READY_STATES",
    "ResultMeta",
    "State",
    "exception_from_result",
    "exception_to_result",
    "pick_result",
]


class State(enum.StrEnum):
    """Where a task is in its life, as Celery names the states."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"

    @property
    def ready(self) -> bool:
        """True for the final states: SUCCESS, FAILURE and REVOKED."""
        return self in READY_STATES


READY_STATES = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})


def _jsonable(value: Any) -> Any:
    try:
        orjson.dumps(value)
    except TypeError:
        return repr(value)
    return value


def exception_to_result(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` as Celery's JSON backends do: type, module and arguments (the errors
    both have under Celery's names, see :mod:`conveyor.results.celery_errors`)."""
    cls = type(exc)
    module, name = celery_name(cls) or (cls.__module__, cls.__qualname__)
    return {
        "exc_type": name,
        "exc_module": module,
        "exc_message": [_jsonable(arg) for arg in exc.args],
    }


def _lookup_exception_type(module: str, qualname: str) -> type[BaseException] | None:
    # Only modules already imported are searched: a result must never trigger an import.
    owner: Any = sys.modules.get(module)
    if owner is None:
        return None
    for part in qualname.split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    # Exception, not BaseException: a stored result must not make get() raise SystemExit.
    if isinstance(owner, type) and issubclass(owner, Exception):
        return owner
    return None


def exception_from_result(value: Any, traceback: str | None) -> BaseException:
    """Rebuild the exception described by ``value`` (see :func:`exception_to_result`).

    Celery's names of the errors both have give conveyor's types; otherwise the original
    type is used when its module is imported in this process and the type accepts the stored
    arguments; otherwise the result is a RemoteTaskError naming the type. Either way the remote
    traceback text is attached as ``remote_traceback`` and as a note.
    """
    if not isinstance(value, Mapping):
        return RemoteTaskError(
            f"task failed: {value!r}", exc_type="unknown", remote_traceback=traceback
        )
    qualname = str(value.get("exc_type") or "Exception")
    module = str(value.get("exc_module") or "builtins")
    raw_args = value.get("exc_message")
    args = tuple(raw_args) if isinstance(raw_args, (list, tuple)) else (raw_args,)
    full_name = qualname if module == "builtins" else f"{module}.{qualname}"
    cls = conveyor_type(module, qualname) or _lookup_exception_type(module, qualname)
    exc: BaseException | None = None
    if cls is not None:
        try:
            exc = cls(*args)
        except Exception:
            exc = None
    if exc is None:
        text = ", ".join(str(a) for a in args)
        exc = RemoteTaskError(
            f"{full_name}: {text}" if text else full_name,
            exc_type=full_name,
            remote_traceback=traceback,
        )
    if traceback:
        with contextlib.suppress(AttributeError):
            exc.remote_traceback = traceback  # type: ignore[attr-defined]
        exc.add_note(f"Remote traceback (most recent call last, on the worker):\n{traceback}")
    return exc


@dataclass(frozen=True, slots=True)
class ResultMeta:
    """One stored state of a task: ``result`` is the return value (SUCCESS) or the error
    description (FAILURE, RETRY, REVOKED); ``worker`` is the hostname of the worker that wrote it;
    ``date_done`` is epoch seconds.
    """

    task_id: str
    state: State
    result: Any = None
    traceback: str | None = None
    date_done: float | None = None
    worker: str | None = None
    task: str | None = None
    retries: int = 0
    signature: Any = None  # [key id, base64] when signed (conveyor.results.signed); as read

    @property
    def ready(self) -> bool:
        """True once the task reached a final state."""
        return self.state in READY_STATES

    @classmethod
    def success(
        cls, task_id: str, value: Any, *, worker: str | None, task: str | None, retries: int = 0
    ) -> ResultMeta:
        """A SUCCESS meta with ``value`` as the result, done now."""
        return cls(task_id, State.SUCCESS, value, None, time.time(), worker, task, retries)

    @classmethod
    def failure(
        cls,
        task_id: str,
        exc: BaseException,
        traceback: str | None,
        *,
        state: State = State.FAILURE,
        worker: str | None,
        task: str | None,
        retries: int = 0,
    ) -> ResultMeta:
        """A FAILURE (or RETRY/REVOKED) meta describing ``exc``, done now."""
        return cls(
            task_id, state, exception_to_result(exc), traceback, time.time(), worker, task, retries
        )

    def exception(self) -> BaseException | None:
        """The rebuilt error for FAILURE and REVOKED; None for other states."""
        if self.state is State.FAILURE:
            return exception_from_result(self.result, self.traceback)
        if self.state is State.REVOKED:
            reason = self.result.get("exc_message") if isinstance(self.result, Mapping) else None
            text = " ".join(str(r) for r in reason) if isinstance(reason, list) else ""
            return TaskRevoked(text or f"task {self.task_id} was revoked")
        return None

    def to_dict(self) -> dict[str, Any]:
        """The Celery-compatible document, with ``date_done`` as ISO 8601."""
        doc = {
            "task_id": self.task_id,
            "status": self.state.value,
            "result": self.result,
            "traceback": self.traceback,
            "children": [],
            "date_done": (
                datetime.fromtimestamp(self.date_done, UTC).isoformat()
                if self.date_done is not None
                else None
            ),
            "worker": self.worker,
            "name": self.task,
            "retries": self.retries,
        }
        if self.signature is not None:
            doc["signature"] = self.signature
        return doc

    def to_json(self) -> bytes:
        """:meth:`to_dict` as JSON bytes; a result value JSON cannot hold raises ProtocolError."""
        try:
            return orjson.dumps(self.to_dict(), option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise ProtocolError(
                f"the result of task {self.task_id} cannot be stored as JSON: {exc}; "
                "return only JSON values (str, int, float, bool, None, lists and dicts)"
            ) from exc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultMeta:
        """Inverse of :meth:`to_dict`; also reads documents written by Celery."""
        try:
            state = State(data["status"])
            task_id = str(data["task_id"])
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"not a result document: {exc}") from exc
        done = data.get("date_done")
        try:
            if isinstance(done, str):
                parsed = datetime.fromisoformat(done)
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=UTC)
                date_done: float | None = parsed.timestamp()
            elif isinstance(done, (int, float)) and not isinstance(done, bool):
                date_done = float(done)
            else:
                date_done = None
        except (ValueError, OverflowError, OSError) as exc:
            raise ProtocolError(f"result document has a bad date_done: {exc}") from exc
        retries = data.get("retries") or 0
        if type(retries) is not int:
            raise ProtocolError("result document has a bad retries: not an integer")
        text = {k: data.get(k) for k in ("traceback", "worker", "name")}
        for key, value in text.items():
            if value is not None and not isinstance(value, str):
                raise ProtocolError(f"result document has a bad {key}: not a string")
        return cls(
            task_id=task_id,
            state=state,
            result=data.get("result"),
            traceback=text["traceback"],
            date_done=date_done,
            worker=text["worker"],
            task=text["name"],
            retries=retries,
            signature=data.get("signature"),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> ResultMeta:
        """Parse :meth:`to_json` output; raises ProtocolError for anything else."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"result is not valid JSON: {exc}") from exc
        if not isinstance(doc, Mapping):
            raise ProtocolError("result document is not a JSON object")
        return cls.from_dict(doc)


def pick_result(results: Mapping[str, ResultMeta]) -> ResultMeta | None:
    """The result to show for one task id among its stored ones (keyed by worker, ``""`` plain).

    The plain result if there is one; else the earliest ready worker result; else any state.
    """
    plain = results.get("")
    if plain is not None:
        return plain
    ready = [m for m in results.values() if m.ready]
    if ready:
        return min(ready, key=lambda m: m.date_done or 0.0)
    return next(iter(results.values()), None)
