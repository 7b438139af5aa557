"""Workflows of signatures: :class:`chain`, :class:`group` and :class:`chord`, Celery's shapes.

Each is a :class:`~conveyor.canvas.signatures.Signature` whose dict form is Celery's
(``celery.chain`` with ``kwargs.tasks``, ``celery.group`` with ``kwargs.tasks``,
``celery.chord`` with ``kwargs.header`` and ``kwargs.body``), so workflows nest and travel
inside messages. How they are sent is Celery's task protocol v2:

- a chain sends its first step with the steps still to come in the message's ``chain`` embed
  (last step first); the worker that finishes a step sends the next with the result as its
  first argument. A group followed by a step becomes a chord of the two. Every step's task id
  is chosen at send time, so the chain's result (its last step's) can be waited for at once.
- a group sends each member with the group's id and its place (``group_index``).
- a chord records its size in the result backend, then sends each header task with the body in
  its ``chord`` embed. The worker that completes the last header part (the backend counts each
  part once and lets one worker claim the join) sends the body with the header's results in
  header order. The body's task id is chosen at send time (derived from the group id unless
  given), so a second send of it is recognised. A backend that cannot join (``rpc://``) is
  refused at send time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from conveyor.canvas.signatures import Partial, Signature, _deep_copy, maybe_signature
from conveyor.errors import ConfigurationError, ProtocolError
from conveyor.task_ids import new_task_id

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.canvas.results import GroupResult
    from conveyor.results.base import ResultBackend

__all__ = ["WORKFLOW_TYPES", "chain", "chord", "chord_body_id", "group"]

_SEND_BATCH = 500  # a group's members sent at once
_CHORD_BODY = uuid.UUID("6f1c1d5e-2b0a-4c55-9d0e-8a7f3c1b2e41")
# Options of a workflow that belong to the workflow's result task (its last step, its body).
_RESULT_OPTIONS = ("link", "task_id", "chord", "group_id", "group_index", "chain")


def chord_body_id(group_id: str) -> str:
    """The task id of a chord's body when none is given: derived from the chord's group id, so
    every sender (and a second send after a crash) names the same task."""
    return str(uuid.uuid5(_CHORD_BODY, group_id))


def _tasks(value: Any, app: App | None) -> list[Signature]:
    if isinstance(value, Mapping):
        return [maybe_signature(value, app)]
    if not isinstance(value, (list, tuple)):
        raise ProtocolError(f"a workflow's tasks must be a list of signatures, got {value!r}")
    return [maybe_signature(t, app) for t in value]


def _split(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (those of the workflow's result task, the rest)."""
    result = {k: v for k, v in options.items() if k in _RESULT_OPTIONS and v is not None}
    rest = {k: v for k, v in options.items() if k not in _RESULT_OPTIONS}
    return result, rest


class _TaskList(Signature):
    """A workflow made of a list of signatures in its kwargs (``chain``, ``group``), built
    from signatures or lists of them, serialized as Celery's ``celery.<kind>`` signature."""

    __slots__ = ()
    _kind: ClassVar[str]

    def __init__(self, *tasks: Mapping[str, Any], app: App | None = None, **options: Any) -> None:
        flat: list[Mapping[str, Any]] = []
        for task in tasks:
            if isinstance(task, (list, tuple)) or (
                not isinstance(task, Mapping) and hasattr(task, "__iter__")
            ):
                flat.extend(task)
            else:
                flat.append(task)
        found = _tasks(flat, app)
        app = app or next((t.app for t in found if t.app is not None), None)
        kind = self._kind
        super().__init__(
            f"celery.{kind}", (), {"tasks": found}, options, subtask_type=kind, app=app
        )

    @classmethod
    def _from(cls, data: Mapping[str, Any], app: App | None) -> Self:
        made = cls(*_tasks((data.get("kwargs") or {}).get("tasks") or [], app), app=app)
        made.options.update(data.get("options") or {})
        made["immutable"] = bool(data.get("immutable"))
        return made

    @property
    def tasks(self) -> list[Signature]:
        """The signatures, in order."""
        tasks: list[Signature] = self["kwargs"]["tasks"]
        return tasks

    def _copy(self) -> Signature:
        return self._from(_deep_copy(self), self.app)

    def _give(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> None:
        self["kwargs"]["tasks"] = self._given(self.tasks, args, kwargs)

    @staticmethod
    def _given(
        tasks: list[Signature], args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> list[Signature]:
        """``tasks`` with partial ``args``/``kwargs`` given: to the first step of a chain,
        to every member of a group."""
        raise NotImplementedError


class chain(_TaskList):
    """Steps run one after another, each given the previous result as its first argument
    (unless immutable); the chain's result is its last step's. ``a.s() | b.s()`` builds one."""

    __slots__ = ()

    _kind = "chain"

    def __or__(self, other: Signature) -> Signature:  # type: ignore[override]
        if not isinstance(other, Signature):
            return NotImplemented
        steps = other.tasks if isinstance(other, chain) else [other]
        return chain(*self.tasks, *steps, app=self.app or other.app)

    @staticmethod
    def _given(
        tasks: list[Signature], args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> list[Signature]:
        return [tasks[0].clone(args, kwargs), *tasks[1:]] if tasks else tasks

    def _steps(self) -> list[Signature]:
        """The steps with nested chains unrolled and each group that has a step after it
        made a chord with that step as its body (as Celery runs them). Idempotent."""
        steps: list[Signature] = []
        for step in self.tasks:
            if isinstance(step, chain):
                steps.extend(step._steps())
            else:
                steps.append(step)
        merged: list[Signature] = []
        for step in steps:
            if merged and isinstance(merged[-1], group):
                merged[-1] = chord(merged[-1], step, app=self.app)
            else:
                merged.append(step)
        if not merged:
            raise ConfigurationError("a chain needs at least one step")
        self["kwargs"]["tasks"] = merged
        return merged

    def freeze(self, app: App | None = None, *, backend: ResultBackend | None = None) -> Any:
        chosen = self._app_for(app)
        steps = self._steps()
        result, _ = _split(self.options)
        last = steps[-1]
        last.options.update(result)
        handle = None
        for step in steps:
            handle = step.freeze(chosen, backend=backend)
        self.options["task_id"] = last.options.get("task_id")
        return handle

    async def _apply(self, app: App, given: Partial) -> Any:
        merged = {**self.options, **given.options}
        outer_chain = list(merged.pop("chain", None) or ())
        link_error = merged.pop("link_error", None)
        result, rest = _split(merged)
        steps = self._steps()
        backend = await app.abackend()
        reply_to = rest.pop("reply_to", None) or await backend.prepare_reply()
        root_id = rest.pop("root_id", None)
        shared: dict[str, Any] = {}
        if reply_to:
            shared["reply_to"] = reply_to
        if link_error:
            shared["link_error"] = link_error
        steps[-1].options.update(result)
        handle = None
        for step in steps:
            step.options.update(shared)
            handle = step.freeze(app, backend=backend)
        if root_id is None:
            root_id = steps[0].id or new_task_id()
        for step in steps:
            step.options["root_id"] = root_id
        first = steps[0]
        embed = [*outer_chain, *(dict(step) for step in reversed(steps[1:]))]
        first_options = {**rest, "root_id": root_id}
        if embed:
            first_options["chain"] = embed
        await first._apply(app, given.with_options(first_options))
        return handle

    def _size(self) -> int:
        for step in reversed(self._steps()):
            size = step._size()
            if size:
                return size
        return 0


class group(_TaskList):
    """Members sent at once, run in parallel; the result is a :class:`GroupResult` whose
    ``get`` lists the members' results in the order given."""

    __slots__ = ()

    _kind = "group"

    @staticmethod
    def _given(
        tasks: list[Signature], args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> list[Signature]:
        return [t.clone(args, kwargs) for t in tasks]

    def freeze(self, app: App | None = None, *, backend: ResultBackend | None = None) -> Any:
        return self._freeze_members(self._app_for(app), backend, None, None)

    def _freeze_members(
        self,
        app: App,
        backend: ResultBackend | None,
        group_id: str | None,
        chord_body: Mapping[str, Any] | None,
        place: int | None = None,
    ) -> GroupResult:
        """Choose the group's id (``group_id`` for a chord's header) and its members' ids,
        marking each with its place (``place`` for all: a group nested at that place in a
        chord's header); return the GroupResult."""
        from conveyor.canvas.results import GroupResult

        gid = group_id or self.options.setdefault("task_id", new_task_id())
        self.options["task_id"] = gid
        handles = []
        for index, member in enumerate(self.tasks):
            member.options.update(group_id=gid, group_index=index if place is None else place)
            if chord_body is not None:
                member.options["chord"] = chord_body
            handles.append(member.freeze(app, backend=backend))
        return GroupResult(gid, handles, app=app, backend=backend)

    async def _apply(self, app: App, given: Partial) -> Any:
        merged = {**self.options, **given.options}
        outer_chain = merged.pop("chain", None)
        if outer_chain:
            # A group with steps after it is a chord whose body is the next step.
            body = maybe_signature(outer_chain[-1], app)
            made = chord(self, body, app=app)
            return await made._apply(app, given.with_options({**merged, "chain": outer_chain[:-1]}))
        chord_body = merged.pop("chord", None)
        gid = merged.pop("group_id", None) if chord_body is not None else None
        place = merged.pop("group_index", None) if chord_body is not None else None
        merged.pop("task_id", None)
        backend = await app.abackend()
        if "reply_to" not in merged:
            reply_to = await backend.prepare_reply()
            if reply_to:
                merged["reply_to"] = reply_to
        result = self._freeze_members(app, backend, gid, chord_body, place)
        members = self.tasks
        each = given.with_options(merged)
        # Sent a batch at a time: each send waits for the broker's confirm, not for the last.
        for start in range(0, len(members), _SEND_BATCH):
            batch = members[start : start + _SEND_BATCH]
            await asyncio.gather(*(m._apply(app, each) for m in batch))
        return result

    def _size(self) -> int:
        return sum(member._size() for member in self.tasks)


class chord(Signature):
    """A group (the header) whose results, in header order, are sent as one list to the body
    once every header task has finished. The result is the body's. A failed header task
    fails the chord: the body does not run and its result raises a ChordError naming the
    header task that failed."""

    __slots__ = ()

    def __init__(
        self,
        header: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        body: Mapping[str, Any],
        app: App | None = None,
        **options: Any,
    ) -> None:
        head = header if isinstance(header, group) else None
        if head is None:
            if isinstance(header, Mapping) and header.get("subtask_type") == "group":
                head = group._from(header, app)
            else:
                members = [header] if isinstance(header, Mapping) else list(header)
                head = group(*members, app=app)
        tail = maybe_signature(body, app)
        app = app or head.app or tail.app
        super().__init__(
            "celery.chord",
            (),
            {"header": head, "body": tail, "kwargs": {}},
            options,
            subtask_type="chord",
            app=app,
        )

    @classmethod
    def _from(cls, data: Mapping[str, Any], app: App | None) -> chord:
        kwargs = data.get("kwargs") or {}
        if "header" not in kwargs or "body" not in kwargs:
            raise ProtocolError(f"a chord signature needs a header and a body: {data!r}")
        made = cls(kwargs["header"], kwargs["body"], app=app)
        made.options.update(data.get("options") or {})
        return made

    @property
    def header(self) -> group:
        """The header group."""
        head: group = self["kwargs"]["header"]
        return head

    @property
    def body(self) -> Signature:
        """The body: called with the list of header results."""
        body: Signature = self["kwargs"]["body"]
        return body

    def _copy(self) -> Signature:
        return chord._from(_deep_copy(self), self.app)

    def _give(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> None:
        self["kwargs"]["header"] = self.header.clone(args, kwargs)

    def _group_id(self) -> str:
        gid = self.header.options.get("task_id")
        if not isinstance(gid, str):
            gid = self.header.options["task_id"] = new_task_id()
        return gid

    def freeze(self, app: App | None = None, *, backend: ResultBackend | None = None) -> Any:
        chosen = self._app_for(app)
        gid = self._group_id()
        body = self.body
        body.options.update(_split(self.options)[0])
        body.options.setdefault("task_id", chord_body_id(gid))
        return body.freeze(chosen, backend=backend)

    async def _apply(self, app: App, given: Partial) -> Any:
        backend = await app.abackend()
        if not backend.joins_chords:
            raise ConfigurationError(
                f"a chord needs a result backend that can join its header's results, and "
                f"{backend.url} cannot; set result_backend to redis://, sqlite:// (or another "
                "backend that keeps results) for the App that sends the chord and its workers"
            )
        merged = {**self.options, **given.options}
        reply_to = merged.get("reply_to") or await backend.prepare_reply()
        gid = self._group_id()
        body = self.body
        # Everything but the partial arguments belongs to the body: it is the chord's result.
        body.options.update({k: v for k, v in merged.items() if v is not None})
        body.options.setdefault("task_id", chord_body_id(gid))
        if reply_to:
            body.options["reply_to"] = reply_to
        result = body.freeze(app, backend=backend)
        header = self.header
        size = header._size()
        if size == 0:
            await body._apply(app, Partial(([],)))
            return result
        await backend.chord_start(gid, size)
        header_options: dict[str, Any] = {"chord": dict(body), "group_id": gid}
        if reply_to:
            header_options["reply_to"] = reply_to
        if "root_id" in merged:
            header_options["root_id"] = merged["root_id"]
        await header._apply(app, given.with_options(header_options))
        return result

    def _size(self) -> int:
        return self.body._size()


WORKFLOW_TYPES = {
    "chain": chain._from,
    "group": group._from,
    "chord": chord._from,
}
