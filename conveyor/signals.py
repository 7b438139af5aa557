"""Celery-style signals: connect a function in your own module, the worker sends it events.

::

    from conveyor.signals import task_failure

    @task_failure.connect
    def report(sender, task_id, exception, **kwargs):
        alerting.send(f"{sender.name}[{task_id}] failed: {exception!r}")

A receiver is called with ``sender`` and the signal's named arguments (listed below), and must
accept ``**kwargs`` so that arguments added later do not break it. ``connect(sender=...)`` limits
a receiver to one sender (a task: the Task object or its name). Receivers are kept with strong
references, in the order they were connected; connecting the same function twice keeps one.
An exception in a receiver is logged and never stops the task or the worker.

Where they run: in the worker's own process, on its event loop, around each task whatever the
pool (the task itself may run in a thread or a child process). They must be quick.

=================== ======================================================================
signal              sender and arguments
=================== ======================================================================
``task_prerun``     the Task; ``task_id``, ``task``, ``args``, ``kwargs``, ``request``
``task_success``    the Task; ``result``, ``task_id``, ``request``
``task_failure``    the Task; ``task_id``, ``exception``, ``args``, ``kwargs``,
                    ``traceback`` (text), ``request``
``task_retry``      the Task; ``request``, ``reason`` (the error), ``countdown``
``task_postrun``    the Task; ``task_id``, ``task``, ``args``, ``kwargs``, ``retval``,
                    ``state`` (a State), ``request``
``worker_ready``    the Worker; (no arguments)
``worker_shutdown`` the Worker; (no arguments)
=================== ======================================================================

The worker sends ``task_success``/``task_failure``/``task_retry`` before ``task_postrun``. A task
run in the caller (``task_always_eager``) sends the task signals too, in the caller's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from conveyor.results.meta import State
    from conveyor.task import Request, Task

__all__ = [
    "Receiver",
    "Signal",
    "any_task_ended_receiver",
    "listening",
    "send_task_ended",
    "send_task_prerun",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_retry",
    "task_success",
    "worker_ready",
    "worker_shutdown",
]

log = logging.getLogger("conveyor.signals")

Receiver = Callable[..., Any]
"""A signal receiver: ``receiver(sender=..., **named_arguments)``."""


def _sender_key(sender: Any) -> Any:
    """How a sender filter matches: a task by its name (so the name works too)."""
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) else sender


_SIGNALS: list[Signal] = []  # every Signal made, for listening()
_listening = False  # whether any receiver of any signal is connected (see listening())


def listening() -> bool:
    """Whether any signal has a receiver: a cheap check the worker makes before each hook."""
    return _listening


def _recount() -> None:
    global _listening
    _listening = any(signal.connected for signal in _SIGNALS)


class Signal:
    """An event that receivers connect to and that conveyor sends (see the module's text)."""

    def __init__(self, name: str, arguments: tuple[str, ...] = ()) -> None:
        self.name = name
        self.arguments = arguments
        self._receivers: list[tuple[Receiver, Any]] = []
        self._lock = threading.Lock()
        self.connected = False  # whether any receiver is: a cheap check on hot paths
        _SIGNALS.append(self)

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"

    @overload
    def connect(self, receiver: Receiver, /, *, sender: Any = None) -> Receiver: ...

    @overload
    def connect(
        self, receiver: None = None, /, *, sender: Any = None
    ) -> Callable[[Receiver], Receiver]: ...

    def connect(
        self, receiver: Receiver | None = None, /, *, sender: Any = None
    ) -> Receiver | Callable[[Receiver], Receiver]:
        """Connect ``receiver`` (also as ``@signal.connect`` or ``@signal.connect(sender=t)``);
        returns it. With ``sender``, it hears only that sender (a Task or a task name).
        Connecting a receiver already connected (for the same sender) does nothing."""

        def add(fn: Receiver) -> Receiver:
            if not callable(fn):
                raise TypeError(f"signal {self.name}: a receiver must be callable, got {fn!r}")
            key = None if sender is None else _sender_key(sender)
            with self._lock:
                if (fn, key) not in self._receivers:
                    self._receivers = [*self._receivers, (fn, key)]
                    self.connected = True
                    _recount()
            return fn

        if receiver is not None:
            return add(receiver)
        return add

    def disconnect(self, receiver: Receiver, *, sender: Any = None) -> bool:
        """Disconnect ``receiver`` (connected for ``sender``); True if it was connected."""
        key = None if sender is None else _sender_key(sender)
        with self._lock:
            kept = [entry for entry in self._receivers if entry != (receiver, key)]
            removed = len(kept) != len(self._receivers)
            self._receivers = kept
            self.connected = bool(kept)
            _recount()
        return removed

    @property
    def receivers(self) -> list[Receiver]:
        """The connected receivers, in the order they were connected."""
        return [fn for fn, _ in self._receivers]

    def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver that hears ``sender`` with ``sender=sender, **named``; returns
        ``(receiver, what it returned)`` pairs. A receiver that raises is logged and its pair
        holds the exception; the others still run."""
        receivers = self._receivers  # replaced (never changed in place) by connect/disconnect
        if not receivers:
            return []
        key = _sender_key(sender)
        replies: list[tuple[Receiver, Any]] = []
        for fn, wanted in receivers:
            if wanted is not None and wanted != key:
                continue
            try:
                replies.append((fn, fn(sender=sender, **named)))
            except Exception as exc:
                log.exception("signal %s: receiver %r failed", self.name, fn)
                replies.append((fn, exc))
        return replies


task_prerun = Signal("task_prerun", ("task_id", "task", "args", "kwargs", "request"))
task_success = Signal("task_success", ("result", "task_id", "request"))
task_failure = Signal(
    "task_failure", ("task_id", "exception", "args", "kwargs", "traceback", "request")
)
task_retry = Signal("task_retry", ("request", "reason", "countdown"))
task_postrun = Signal(
    "task_postrun", ("task_id", "task", "args", "kwargs", "retval", "state", "request")
)
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")


def send_task_ended(
    task: Task,
    request: Request,
    state: State,
    *,
    value: Any = None,
    error: BaseException | None = None,
    traceback: str | None = None,
    countdown: float | None = None,
) -> None:
    """Send ``task_success``, ``task_failure`` or ``task_retry`` (by ``state``: SUCCESS, RETRY,
    else a failure), then ``task_postrun``, for ``task`` run for ``request``. Used by the worker
    and by ``task_always_eager``."""
    if not any_task_ended_receiver():
        return
    name = state.value
    if name == "SUCCESS":
        task_success.send(task, result=value, task_id=request.id, request=request)
    elif name == "RETRY":
        task_retry.send(task, request=request, reason=error, countdown=countdown)
    else:
        task_failure.send(task, exception=error, traceback=traceback, **_call_of(request))
    task_postrun.send(
        task,
        task=task,
        retval=value if name == "SUCCESS" else error,
        state=state,
        **_call_of(request),
    )


def send_task_prerun(task: Task, request: Request) -> None:
    """Send ``task_prerun`` for ``task`` about to run for ``request``."""
    if not task_prerun.connected:
        return
    task_prerun.send(task, task=task, **_call_of(request))


def _call_of(request: Request) -> dict[str, Any]:
    """What every signal about a run carries of its call, by Celery's names."""
    return {
        "task_id": request.id,
        "args": request.args,
        "kwargs": request.kwargs,
        "request": request,
    }


def any_task_ended_receiver() -> bool:
    """Whether a receiver listens to how a task ended (success, failure, retry, postrun)."""
    return (
        task_success.connected
        or task_failure.connected
        or task_retry.connected
        or task_postrun.connected
    )
