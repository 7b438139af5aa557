"""Signatures: a task call (name, arguments, send options) as a value that can be sent later.

A :class:`Signature` is Celery's: a ``dict`` with the keys ``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable`` and ``chord_size``, so it serializes to and from
JSON exactly as Celery's does, travels in a task message's embed (protocol v2 ``callbacks``,
``errbacks``, ``chain``, ``chord``) and can be a task argument. Being a dict is the wire form;
the typed properties (``name``, ``args``, ``kwargs``, ``options``, ``immutable``) are how code
reads it. A signature by name needs none of the task's code: services send to code they do not
have.

Sending needs an App: the one given (``app.signature``, ``task.s``, ``signature(..., app=)``),
or the one of the workflow it is part of.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from conveyor.errors import ConfigurationError, ProtocolError
from conveyor.options import SEND_OPTION_NAMES, SendOptions
from conveyor.protocol.task_message import parse_time
from conveyor.task_ids import new_task_id

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.results.base import ResultBackend

__all__ = ["Partial", "Signature", "maybe_signature", "send_options", "signature"]

log = logging.getLogger("conveyor.canvas")

_SEND_OPTIONS = frozenset(SEND_OPTION_NAMES)
# Options a Celery signature may carry that do not change how conveyor sends it.
_IGNORED_OPTIONS = frozenset(
    {
        "subtask_type",
        "add_to_parent",
        "producer",
        "connection",
        "shadow",
        "soft_time_limit",
        "stamped_headers",
        "stamps",
        "compression",
        "retries",
        "retry",
        "retry_policy",
        "delivery_mode",
        "mandatory",
    }
)


def send_options(options: Mapping[str, Any]) -> SendOptions:
    """The :class:`SendOptions` of a signature's ``options`` (Celery's names), ignoring the
    options that do not change a send; ``eta`` may be an ISO 8601 string (its JSON form).

    Raises ProtocolError for an option value of the wrong kind.
    """
    known: dict[str, Any] = {}
    for key, value in options.items():
        if key in _SEND_OPTIONS:
            if value is not None:
                known[key] = value
        elif key not in _IGNORED_OPTIONS:
            log.warning(
                "signature option %r is not a send option and is ignored; the send options are: %s",
                key,
                ", ".join(SEND_OPTION_NAMES),
            )
    eta = known.get("eta")
    if isinstance(eta, str):
        known["eta"] = parse_time(eta, "eta")
    expires = known.get("expires")
    if isinstance(expires, str):
        known["expires"] = parse_time(expires, "expires")
    if "time_limit" in known and isinstance(known["time_limit"], (list, tuple)):
        known["time_limit"] = known["time_limit"][0]
    try:
        return SendOptions(**known)
    except TypeError as exc:  # pragma: no cover - SendOptions takes exactly these names
        raise ProtocolError(f"bad signature options {options!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Partial:
    """What one send adds to a signature: ``args`` before its own (unless it is immutable),
    ``kwargs`` and send ``options`` over its own."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def with_options(self, options: Mapping[str, Any]) -> Partial:
        """The same arguments, with ``options`` instead of these."""
        return Partial(self.args, self.kwargs, options)


class Signature(dict[str, Any]):
    """One task call to make later: ``task`` by name, its ``args``/``kwargs`` and send
    ``options`` (those of :class:`~conveyor.options.SendOptions`, Celery's names).

    ``immutable``: the call ignores the result of the step before it (``task.si``); otherwise a
    workflow passes that result as the first argument. Created by :func:`signature`,
    ``app.signature`` or ``task.s``/``task.si``.
    """

    __slots__ = ("app",)

    def __init__(
        self,
        task: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: App | None = None,
    ) -> None:
        if not isinstance(task, str) or not task:
            raise ConfigurationError(f"a signature needs a task name, got {task!r}")
        super().__init__(
            task=task,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=subtask_type,
            immutable=bool(immutable),
            chord_size=None,
        )
        self.app = app

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, app: App | None = None) -> Signature:
        """The signature (or chain, group, chord) that ``data``, Celery's dict form, describes.

        Raises ProtocolError for a dict that is not a signature, or a kind of workflow conveyor
        does not run (Celery's ``chunks``, ``xmap``, ``xstarmap``).
        """
        from conveyor.canvas.workflows import WORKFLOW_TYPES

        if isinstance(data, Signature) and type(data) is not Signature:
            return data
        if not isinstance(data, Mapping) or not isinstance(data.get("task"), str):
            raise ProtocolError(f"not a signature (a dict with a 'task' name): {data!r}")
        kind = data.get("subtask_type")
        if kind:
            maker = WORKFLOW_TYPES.get(kind)
            if maker is None:
                raise ProtocolError(
                    f"conveyor cannot run a {kind!r} signature ({data['task']!r}); it runs "
                    "plain signatures, chains, groups and chords"
                )
            return maker(data, app)
        args = data.get("args") or ()
        kwargs = data.get("kwargs") or {}
        options = data.get("options") or {}
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
            raise ProtocolError(f"signature {data['task']!r} has bad args or kwargs")
        if not isinstance(options, Mapping):
            raise ProtocolError(f"signature {data['task']!r} has bad options {options!r}")
        return cls(
            data["task"],
            args,
            kwargs,
            options,
            immutable=bool(data.get("immutable")),
            app=app if app is not None else getattr(data, "app", None),
        )

    @property
    def name(self) -> str:
        """The task's name."""
        name: str = self["task"]
        return name

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments given so far."""
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments given so far."""
        kwargs: dict[str, Any] = self["kwargs"]
        return kwargs

    @property
    def options(self) -> dict[str, Any]:
        """The send options (Celery's names; see :class:`~conveyor.options.SendOptions`)."""
        options: dict[str, Any] = self["options"]
        return options

    @property
    def immutable(self) -> bool:
        """Whether a workflow leaves this call's arguments alone (no previous result)."""
        return bool(self["immutable"])

    @property
    def id(self) -> str | None:
        """The task id this call will be sent with, once chosen (:meth:`freeze`)."""
        tid = self.options.get("task_id")
        return tid if isinstance(tid, str) else None

    def __repr__(self) -> str:
        args = ", ".join(
            [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        )
        return f"{self.name}({args}){'!' if self.immutable else ''}"

    def set(self, *, immutable: bool | None = None, **options: Any) -> Self:
        """Set send options (and ``immutable``) on this signature; return it."""
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy given ``args``/``kwargs`` as a partial call (see :meth:`_give`), with
        ``options`` merged over its own."""
        copy = self._copy()
        if args or kwargs:
            copy._give(args, kwargs)
        copy.options.update(options)
        return copy

    def _copy(self) -> Signature:
        """A deep copy, of the same kind, with the same app."""
        copy = Signature.from_dict(_deep_copy(self), app=self.app)
        copy.app = self.app
        return copy

    def _give(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> None:
        """Take a partial call: ``args`` before its own, ``kwargs`` merged over its own
        (neither when immutable)."""
        if self.immutable:
            return
        if args:
            self["args"] = [*args, *self["args"]]
        if kwargs:
            self["kwargs"] = {**self["kwargs"], **kwargs}

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Send ``callback`` with this task's result when it succeeds; returns ``callback``."""
        self._append_option("link", callback)
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Send ``errback`` with this task's id when it fails; returns ``errback``."""
        self._append_option("link_error", errback)
        return errback

    def _append_option(self, key: str, sig: Mapping[str, Any]) -> None:
        given = self.options.get(key)
        if given is None:
            self.options[key] = [sig]
        elif isinstance(given, Mapping):
            self.options[key] = [given, sig]
        else:
            self.options[key] = [*given, sig]

    def __or__(self, other: Signature) -> Signature:  # type: ignore[override]
        from conveyor.canvas.workflows import chain

        if not isinstance(other, Signature):
            return NotImplemented
        return chain(self, other, app=self.app or other.app)

    def _app_for(self, app: App | None) -> App:
        chosen = app or self.app
        if chosen is None:
            raise ConfigurationError(
                f"signature {self.name!r} has no App to send it with: build it with "
                "app.signature(...) or task.s(...), or pass app="
            )
        return chosen

    def freeze(self, app: App | None = None, *, backend: ResultBackend | None = None) -> Any:
        """Choose this call's task id now (kept if already chosen); return its result handle
        (an AsyncResult; a GroupResult for a group; the body's result for a chord)."""
        from conveyor.results.async_result import AsyncResult

        chosen = self._app_for(app)
        tid = self.options.setdefault("task_id", new_task_id())
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop, backend = None, None
        return AsyncResult(tid, app=chosen, task_name=self.name, backend=backend, loop=loop)

    async def _apply(self, app: App, given: Partial) -> Any:
        """Send this call with what ``given`` adds to it; its result handle."""
        if self.immutable:
            call_args, call_kwargs = self.args, self.kwargs
        else:
            call_args = (*given.args, *self.args)
            call_kwargs = {**self.kwargs, **given.kwargs}
        merged = {**self.options, **given.options}
        return await app.asend(self.name, call_args, call_kwargs, send_options(merged))

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App | None = None,
        **options: Any,
    ) -> Any:
        """Send it (partial ``args`` go before its own, ``kwargs`` and ``options`` over its
        own); return the result handle. Raises as ``App.asend_task``."""
        chosen = self._app_for(app)
        # A copy is sent: choosing ids must not change this signature, which may be sent again.
        sent = self.clone() if self["subtask_type"] else self
        return await sent._apply(chosen, Partial(tuple(args or ()), dict(kwargs or {}), options))

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App | None = None,
        **options: Any,
    ) -> Any:
        """Sync twin of :meth:`aapply_async`."""
        chosen = self._app_for(app)
        return chosen.run_sync(self.aapply_async(args, kwargs, app=chosen, **options))

    async def adelay(self, *args: Any, **kwargs: Any) -> Any:
        """Send it with these partial arguments (async)."""
        return await self.aapply_async(args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """Send it with these partial arguments."""
        return self.apply_async(args, kwargs)

    def _size(self) -> int:
        """How many header parts this call adds to a chord it is part of."""
        return 1


def _deep_copy(value: Any) -> Any:
    """A copy of a signature's dict form, nested signatures and containers included."""
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


def signature(
    name: str | Mapping[str, Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    app: App | None = None,
    immutable: bool = False,
    **options: Any,
) -> Signature:
    """A signature of task ``name`` (or the signature a Celery dict describes)."""
    if isinstance(name, Mapping):
        return Signature.from_dict(name, app=app)
    return Signature(name, args, kwargs, options, immutable=immutable, app=app)


def maybe_signature(value: Mapping[str, Any], app: App | None = None) -> Signature:
    """``value`` as a Signature (it may be one, or its dict form)."""
    if isinstance(value, Signature):
        if app is not None and value.app is None:
            value.app = app
        return value
    return Signature.from_dict(value, app=app)


def signatures(value: Any, app: App | None = None) -> list[Signature]:
    """One signature or a list of them, as a list (for ``link`` / ``link_error``)."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [maybe_signature(value, app)]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [maybe_signature(v, app) for v in value]
    raise ProtocolError(f"not a signature or a list of signatures: {value!r}")
