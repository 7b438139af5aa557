"""Planning a send: the route, the times and the message of one task send, before any I/O.

:func:`plan` is a pure function of the task's name, arguments, :class:`SendOptions`, the task
(if registered here), the Router and the settings; the App then declares the route and
publishes the :class:`Plan`'s message (see ``App.asend``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from conveyor._frozen import fast_init
from conveyor.errors import ConfigurationError, Unroutable
from conveyor.options import NO_OPTIONS
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.task_message import TaskMessage, encode_new_task, encode_task
from conveyor.results.async_result import AsyncResult, ResultSource
from conveyor.routing.entities import Broadcast
from conveyor.task import current_request
from conveyor.task_ids import new_task_id

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.options import SendOptions, Signatures
    from conveyor.results.base import ResultBackend
    from conveyor.routing.router import Route, Router
    from conveyor.task import Task
    from conveyor.transports.base import Published, Transport, Wakeup

__all__ = ["Plan", "plan"]


@fast_init
@dataclass(frozen=True, slots=True)
class Plan:
    """A send worked out before any I/O (:func:`plan`): the route, the times, the options."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    route: Route
    delay: float | None
    eta: datetime | None
    expires: datetime | None
    task_id: str | None
    headers: Mapping[str, Any] | None
    ignore_result: bool
    time_limit: float | None
    serializer: str
    options: SendOptions | None = None  # set only when it carries a workflow (see _embed)

    def message(self, reply_to: str | None) -> tuple[str, Envelope]:
        """The task id (a new one unless given) and the encoded message; ProtocolError for
        arguments the serializer cannot hold."""
        parent = current_request()
        tid = self.task_id or new_task_id()
        if self.options is not None:
            return tid, encode_task(self._workflow_message(tid, reply_to), self.serializer)
        return tid, encode_new_task(
            self.name,
            tid,
            self.args,
            self.kwargs,
            root_id=(parent.root_id or parent.id) if parent is not None else tid,
            parent_id=parent.id if parent is not None else None,
            ignore_result=self.ignore_result,
            reply_to=reply_to,
            priority=self.route.priority,
            eta=self.eta,
            expires=self.expires,
            time_limit=self.time_limit,
            headers=self.headers,
            serializer=self.serializer,
        )

    def result(
        self,
        tid: str,
        app: ResultSource,
        backend: ResultBackend | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> AsyncResult:
        """The caller's AsyncResult for this send as task ``tid``: it knows when ``get`` has
        nothing to wait for (``ignore_result``) or more than one result (a broadcast)."""
        queue = self.route.queue
        return AsyncResult(
            tid,
            app=app,
            task_name=self.name,
            backend=backend,
            loop=loop,
            ignored=self.ignore_result,
            broadcast=queue.name if isinstance(queue, Broadcast) else None,
        )

    async def publish(self, transport: Transport, envelope: Envelope) -> None:
        """Publish this send's ``envelope`` (mandatory, on its route, declared already, with
        its delay) and wait for the broker's confirm; Unroutable says where the route went."""
        route = self.route
        try:
            await transport.publish(
                envelope,
                exchange=route.exchange.name,
                routing_key=route.routing_key,
                mandatory=True,
                delay=self.delay,
            )
        except Unroutable as exc:
            raise self.unroutable(exc) from exc

    def publish_from_thread(
        self, transport: Transport, envelope: Envelope, wakeup: Wakeup
    ) -> Published | None:
        """Write this send's ``envelope`` (mandatory, on its route, declared already) onto
        ``transport``'s connection from a thread other than its loop's, as
        :meth:`Transport.publish_from_thread` does: None if the transport cannot."""
        route = self.route
        return transport.publish_from_thread(
            envelope,
            exchange=route.exchange.name,
            routing_key=route.routing_key,
            mandatory=True,
            wakeup=wakeup,
        )

    def _workflow_message(self, tid: str, reply_to: str | None) -> TaskMessage:
        """The message of a send whose options carry a workflow: the embed (callbacks,
        errbacks, chain, chord) and the group, reply and lineage they set."""
        options = self.options
        assert options is not None
        parent = current_request()
        parent_id = options.parent_id or (parent.id if parent is not None else None)
        root_id = options.root_id or ((parent.root_id or parent.id) if parent is not None else tid)
        embed = {
            "callbacks": _signatures(options.link, "link"),
            "errbacks": _signatures(options.link_error, "link_error"),
            "chain": [dict(step) for step in options.chain] if options.chain else None,
            "chord": dict(options.chord) if options.chord is not None else None,
        }
        return TaskMessage(
            task=self.name,
            id=tid,
            args=self.args,
            kwargs=self.kwargs,
            embed=embed,
            eta=self.eta,
            expires=self.expires,
            timelimit=(self.time_limit, None),
            root_id=root_id,
            parent_id=parent_id,
            group=options.group_id,
            group_index=options.group_index,
            ignore_result=self.ignore_result,
            reply_to=options.reply_to or reply_to,
            priority=self.route.priority,
            headers=dict(self.headers) if self.headers else {},
        )

    def unroutable(self, exc: Unroutable) -> Unroutable:
        """The sender's error for a message no queue took: which route, decided by what."""
        route = self.route
        return Unroutable(
            f"task {self.name!r} was routed to exchange {route.exchange.name!r} with routing key "
            f"{route.routing_key!r} ({route.decided_by}) but no queue is bound there"
            + (
                "; no worker is consuming that broadcast queue"
                if isinstance(route.queue, Broadcast)
                else ""
            ),
            exchange=exc.exchange,
            routing_key=exc.routing_key,
        )


def _signatures(given: Signatures | None, what: str) -> list[dict[str, Any]] | None:
    """``link`` / ``link_error`` as the embed's list of signature dicts (None for none);
    ConfigurationError for anything else."""
    if not given:
        return None
    if isinstance(given, Mapping):
        return [dict(given)]
    if (
        isinstance(given, Sequence)
        and not isinstance(given, str)
        and all(isinstance(sig, Mapping) for sig in given)
    ):
        return [dict(sig) for sig in given]
    raise ConfigurationError(
        f"{what} must be a signature or a list of them (task.s(...), app.signature(...)), "
        f"got {given!r}"
    )


def _carries_workflow(options: SendOptions) -> bool:
    return options is not NO_OPTIONS and not (
        options.link is None
        and options.link_error is None
        and options.chain is None
        and options.chord is None
        and options.group_id is None
        and options.group_index is None
        and options.reply_to is None
        and options.parent_id is None
        and options.root_id is None
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def plan(
    name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: SendOptions,
    *,
    task: Task | None,
    router: Router,
    conf: Settings,
    clock: Callable[[], datetime] = _utc_now,
) -> Plan:
    """Everything about sending task ``name`` that needs no I/O (any thread): the route from
    ``router`` (``options`` over the ``task``'s attributes over ``task_routes``), the delay and
    the times on the message (``clock`` is read only when ``options`` sets one), and the
    options that fall back to the task's and then to ``conf``'s.

    Raises RoutingError for a route that cannot be resolved.
    """
    args = tuple(args) if args else ()
    kwargs = dict(kwargs) if kwargs else {}
    route = router.route(name, args, kwargs, options=options.route_options(), task=task)
    delay: float | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    if options.countdown is not None or options.eta is not None or options.expires is not None:
        delay, eta, expires = _times(options, clock())
    ignore_result = options.ignore_result
    if ignore_result is None:
        ignore_result = task.ignore_result if task is not None else conf.task_ignore_result
    time_limit = options.time_limit
    if time_limit is None and task is not None:
        time_limit = task.time_limit
    return Plan(
        name,
        args,
        kwargs,
        route,
        delay,
        eta,
        expires,
        options.task_id,
        options.headers,
        ignore_result,
        time_limit,
        options.serializer or conf.task_serializer,
        options if _carries_workflow(options) else None,
    )


def _times(
    options: SendOptions, now: datetime
) -> tuple[float | None, datetime | None, datetime | None]:
    """The delay in seconds (None: send now), the ETA it means, and the expiry time."""
    delay: float | None = None
    if options.countdown is not None:
        delay = float(options.countdown)
    elif options.eta is not None:
        eta = options.eta
        delay = ((eta if eta.tzinfo is not None else eta.replace(tzinfo=UTC)) - now).total_seconds()
    if delay is not None and delay <= 0:
        delay = None
    eta_at = now + timedelta(seconds=delay) if delay is not None else None
    expires = options.expires
    expires_at: datetime | None = None
    if isinstance(expires, datetime):
        expires_at = expires if expires.tzinfo is not None else expires.replace(tzinfo=UTC)
    elif expires is not None:
        expires_at = now + timedelta(seconds=float(expires))
    return delay, eta_at, expires_at
