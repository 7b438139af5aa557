"""``AsyncResult``: the caller's handle on a task that was sent.

Every method has an async twin (``aget``, ``astate``, ``acollect``, ``aforget``...); the sync
ones run the async ones on the sync API's private event loop (:mod:`conveyor.sync_loop`). A
result remembers the backend (and its event loop) that sent it, which matters for ``rpc://``:
replies come back only to the reply queue of the loop that sent the task; a result made without
one reads from its ``app``'s backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from conveyor.errors import ResultUnavailable
from conveyor.results.base import ResultBackend
from conveyor.results.meta import ResultMeta, State
from conveyor.results.signed import check_result
from conveyor.sync_loop import SYNC_LOOP

if TYPE_CHECKING:
    from conveyor.protocol.signing import MessageSigning

__all__ = ["AsyncResult", "ResultSource"]

T = TypeVar("T")


class ResultSource(Protocol):
    """Where a result is read when its sender's backend is not at hand (an App)."""

    async def abackend(self) -> ResultBackend:
        """The connected result backend for the running event loop."""
        ...

    @property
    def signing(self) -> MessageSigning | None:
        """Message signing (None: off); when on, results must be signed by a trusted key."""
        ...


@dataclass(eq=False, repr=False)
class AsyncResult:
    """The result of task ``id``: its ``state``, its value (``get``), its error, its traceback.

    For a broadcast task, ``collect`` returns every worker's result by worker hostname.
    A result from a send knows whether results were off for it (``ignored``) and the broadcast
    queue it went to (``broadcast``): ``get`` then raises ResultUnavailable at once.
    ``backend`` and ``loop`` are the backend that sent it and that backend's event loop
    (None: read through ``app``'s backend). Equal results have the same ``id``.
    """

    id: str
    _: KW_ONLY
    app: ResultSource
    task_name: str | None = None
    backend: ResultBackend | None = None
    loop: asyncio.AbstractEventLoop | None = None
    ignored: bool = False
    broadcast: str | None = None
    _meta: ResultMeta | None = field(default=None, init=False)

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.task_name or ''}>".replace(" >", ">")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def _call(self, op: Callable[[ResultBackend], Awaitable[T]]) -> T:
        """Run ``op`` on the backend that owns this result, hopping to its loop if needed."""
        running = asyncio.get_running_loop()
        home = self.loop
        if self.backend is not None and (home is None or home is running):
            return await op(self.backend)
        if self.backend is not None and home is not None and home.is_running():
            backend = self.backend
            future = asyncio.run_coroutine_threadsafe(_invoke(op, backend), home)
            return await asyncio.wrap_future(future)
        return await op(await self.app.abackend())

    def _check_sync(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is self.loop:
            raise RuntimeError(
                "a sync AsyncResult method was called inside the event loop that sent the task; "
                "use the async twin (await result.aget(), .astate(), ...)"
            )

    def _check_single(self) -> None:
        """Refuse to wait for a result that will never be one (see ResultUnavailable)."""
        what = f"task {self.task_name!r} [{self.id}]" if self.task_name else f"task {self.id}"
        if self.ignored:
            raise ResultUnavailable(
                f"results are off for {what}: it was sent with ignore_result, so no worker "
                "stores one and get() would only wait out its timeout; send it with "
                "ignore_result=False (or set the task's ignore_result=False) to get its result"
            )
        if self.broadcast is not None:
            raise ResultUnavailable(
                f"{what} went to broadcast queue {self.broadcast!r}: every worker consuming it "
                "runs it and stores a result of its own, so there is no one result to get(); "
                "use collect(timeout=..., expected=...) for each worker's result by hostname"
            )

    def _sync(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        self._check_sync()
        return SYNC_LOOP.run(make)

    def _checked(self, meta: T) -> T:
        """``meta`` (a ResultMeta, or None), checked against the app's signing if it signs:
        SignatureError for a result that is unsigned or not signed by a trusted key."""
        signing = self.app.signing
        if signing is not None and isinstance(meta, ResultMeta):
            check_result(meta, signing)
        return meta

    async def ameta(self) -> ResultMeta | None:
        """The latest stored state document, or None while nothing is known."""
        if self._meta is not None:
            return self._meta
        meta = self._checked(await self._call(lambda b: b.get(self.id)))
        if meta is not None and meta.ready:
            self._meta = meta
        return meta

    async def astate(self) -> State:
        """Async twin of :attr:`state`."""
        meta = await self.ameta()
        return meta.state if meta is not None else State.PENDING

    @property
    def state(self) -> State:
        """PENDING until a worker stores something; then RETRY, STARTED, SUCCESS, FAILURE..."""
        return self._sync(self.astate)

    status = state

    async def aready(self) -> bool:
        """Async twin of :meth:`ready`."""
        return (await self.astate()).ready

    def ready(self) -> bool:
        """True once the task finished: SUCCESS, FAILURE or REVOKED."""
        return self._sync(self.aready)

    def successful(self) -> bool:
        """True if the task finished with SUCCESS."""
        return self.state is State.SUCCESS

    def failed(self) -> bool:
        """True if the task finished with FAILURE."""
        return self.state is State.FAILURE

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Wait for the task and return its value.

        On FAILURE raise the task's error (its own type when it can be rebuilt here, else
        RemoteTaskError), with the worker's traceback text attached; on REVOKED raise
        TaskRevoked. With ``propagate=False`` return that error instead of raising it.
        Raises ResultTimeout if nothing final arrives within ``timeout`` seconds, and
        ResultUnavailable at once for a task sent with ``ignore_result`` or to a broadcast
        queue.
        """
        self._check_single()
        meta = self._meta
        if meta is None:
            meta = self._checked(await self._call(lambda b: b.wait(self.id, timeout=timeout)))
            self._meta = meta
        return _outcome(meta, propagate)

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Sync twin of :meth:`aget`."""
        self._check_sync()
        self._check_single()
        backend = self.backend
        if self._meta is None and backend is not None:
            # A result that comes here unasked (rpc:// replies, redis:// announcements) is
            # waited for without a coroutine: see ResultBackend.wait_from_thread.
            started = time.monotonic()
            self._meta = self._checked(
                backend.wait_from_thread(self.id, timeout, SYNC_LOOP.wait_for)
            )
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - started))
        if self._meta is not None:
            return _outcome(self._meta, propagate)
        return self._sync(lambda: self.aget(timeout, propagate=propagate))

    @property
    def result(self) -> Any:
        """The value if SUCCESS, the error if FAILURE/REVOKED, else None (does not wait)."""
        meta = self._sync(self.ameta)
        if meta is None:
            return None
        error = meta.exception()
        return error if error is not None else (meta.result if meta.ready else None)

    @property
    def traceback(self) -> str | None:
        """The worker's traceback text for a failed task, else None."""
        meta = self._sync(self.ameta)
        return meta.traceback if meta is not None else None

    @property
    def worker(self) -> str | None:
        """The hostname of the worker that stored the latest state, if any."""
        meta = self._sync(self.ameta)
        return meta.worker if meta is not None else None

    async def acollect(
        self, timeout: float = 5.0, *, expected: int | None = None
    ) -> dict[str, Any]:
        """Every worker's value for a broadcast task, by worker hostname.

        Returns once ``expected`` workers replied, or after ``timeout`` seconds with those that
        did. Failed runs appear as their (rebuilt) error objects; nothing is raised.
        """
        replies: Mapping[str, ResultMeta] = await self._call(
            lambda b: b.collect(self.id, timeout=timeout, expected=expected)
        )
        out: dict[str, Any] = {}
        for worker, meta in replies.items():
            self._checked(meta)
            error = meta.exception()
            out[worker] = error if error is not None else meta.result
        return out

    def collect(self, timeout: float = 5.0, *, expected: int | None = None) -> dict[str, Any]:
        """Sync twin of :meth:`acollect`."""
        return self._sync(lambda: self.acollect(timeout, expected=expected))

    async def aforget(self) -> None:
        """Async twin of :meth:`forget`."""
        self._meta = None
        await self._call(lambda b: b.forget(self.id))

    def forget(self) -> None:
        """Remove what the backend keeps about this task (every worker's result)."""
        self._sync(self.aforget)


def _outcome(meta: ResultMeta, propagate: bool) -> Any:
    """What ``get`` returns (or raises) for a ready ``meta``."""
    error = meta.exception()
    if error is None:
        return meta.result
    if propagate:
        raise error
    return error


async def _invoke(op: Callable[[ResultBackend], Awaitable[T]], backend: ResultBackend) -> T:
    return await op(backend)
