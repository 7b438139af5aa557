"""The worker's workflow step: what a finished task's message asks to happen next.

Celery's task protocol v2 carries a workflow in the message's embed: ``callbacks`` (``link``),
``errbacks`` (``link_error``), ``chain`` (the steps still to run, last first) and ``chord`` (the
body this task is a header part of, with the ``group`` and ``group_index`` headers). After a
run's result is stored and before its message is acked, :class:`WorkflowStep` does what they
ask, as Celery's worker does:

- success: each callback is sent with the value as its first argument; the next chain step is
  sent with the value and the rest of the chain; a chord header part is counted in the result
  backend, and the worker that completes the count sends the body with the header's results in
  header order (or, when a header task failed, stores the body's FAILURE as a ChordError naming
  that task, and sends the body's errbacks).
- failure: each errback is sent with the failed task's id; every chain step still to come is
  stored as FAILURE with the same error (so the chain's result raises it) and, if it is a chord
  header part, counted as a failed part; the task's own chord part is counted as failed.

A message whose embed asks for what conveyor cannot do (an unknown kind of signature, a chord
on a backend that cannot join) is refused before it runs (:meth:`WorkflowStep.refusal`): the
worker dead-letters it with the reason and stores the task's FAILURE, never drops it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.app import App
from conveyor.canvas.signatures import Partial, Signature, maybe_signature
from conveyor.errors import ChordError, ProtocolError
from conveyor.protocol.task_message import TaskMessage
from conveyor.results.base import ChordJoin, ChordPart, ResultBackend, StoreRequest
from conveyor.results.meta import ResultMeta, State, exception_from_result, exception_to_result

__all__ = ["CHORD_HEADER", "CHORD_SEND_HEADER", "WorkflowStep", "carries_workflow"]

log = logging.getLogger("conveyor.worker")

_EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")
# Headers on a chord body sent by a conveyor worker: its chord, and which send it is.
CHORD_HEADER = "x-conveyor-chord"
CHORD_SEND_HEADER = "x-conveyor-chord-send"


def carries_workflow(message: TaskMessage) -> bool:
    """Whether ``message``'s embed asks for anything after the run."""
    embed = message.embed
    return embed is not None and any(embed.get(key) for key in _EMBED_KEYS)


def _sig_list(value: Any, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ProtocolError(f"embed {what!r} must be a list of signatures, got {value!r}")


class WorkflowStep:
    """Runs the workflow part of finished tasks for one worker (``hostname``) of ``app``."""

    def __init__(self, app: App, hostname: str) -> None:
        self.app = app
        self.hostname = hostname

    def _sig(self, data: Mapping[str, Any]) -> Signature:
        return maybe_signature(data, self.app)

    def refusal(self, message: TaskMessage, backend: ResultBackend) -> str | None:
        """Why conveyor cannot do what ``message``'s embed asks (None: it can)."""
        embed = message.embed or {}
        try:
            for key in _EMBED_KEYS:
                for data in _sig_list(embed.get(key), key):
                    self._sig(data)
        except ProtocolError as exc:
            return f"workflow cannot be run: {exc}"
        if embed.get("chord") and not backend.joins_chords:
            return (
                f"the task is a chord header part but this worker's result backend "
                f"({backend.url}) cannot join chords; configure a backend that keeps results"
            )
        return None

    async def second_send(self, message: TaskMessage, backend: ResultBackend) -> bool:
        """Whether ``message`` is a second send of a chord body (its first sender died before
        marking the chord done, and another worker sent it again): it must not run."""
        group_id = message.headers.get(CHORD_HEADER)
        send = message.headers.get(CHORD_SEND_HEADER)
        if not isinstance(group_id, str) or not isinstance(send, str) or not backend.joins_chords:
            return False
        if await backend.chord_body_run(group_id, send):
            return False
        log.warning(
            "task %s[%s] is a second send of chord %s's body: recognised, not run again",
            message.task,
            message.id,
            group_id,
        )
        return True

    async def succeeded(self, message: TaskMessage, value: Any, backend: ResultBackend) -> None:
        """Send the callbacks and the next chain step; count the chord part."""
        embed = message.embed or {}
        lineage = {"parent_id": message.id, "root_id": message.root_id or message.id}
        for data in _sig_list(embed.get("callbacks"), "callbacks"):
            await self._sig(data)._apply(self.app, Partial((value,), options=lineage))
        chain = _sig_list(embed.get("chain"), "chain")
        if chain:
            step = self._sig(chain[-1])
            await step._apply(self.app, Partial((value,), options={**lineage, "chain": chain[:-1]}))
        chord = embed.get("chord")
        if chord and message.group:
            part = ChordPart(message.group, message.id, message.group_index, State.SUCCESS, value)
            await self._part_done(part, chord, backend)

    async def failed(
        self,
        message: TaskMessage,
        error: BaseException,
        traceback: str | None,
        backend: ResultBackend,
    ) -> None:
        """Send the errbacks; fail the chain steps still to come and the chord part."""
        embed = message.embed or {}
        described = exception_to_result(error)
        for data in _sig_list(embed.get("errbacks"), "errbacks"):
            await self._errback(data, message.id, message.root_id)
        for data in _sig_list(embed.get("chain"), "chain"):
            await self._fail_signature(self._sig(data), error, traceback, backend)
        chord = embed.get("chord")
        if chord and message.group:
            part = ChordPart(
                message.group, message.id, message.group_index, State.FAILURE, described
            )
            await self._part_done(part, chord, backend)

    async def _errback(self, data: Mapping[str, Any], task_id: str, root_id: str | None) -> None:
        lineage = {"parent_id": task_id, "root_id": root_id or task_id}
        await self._sig(data)._apply(self.app, Partial((task_id,), options=lineage))

    async def _fail_signature(
        self,
        sig: Signature,
        error: BaseException,
        traceback: str | None,
        backend: ResultBackend,
    ) -> None:
        """Store ``error`` as the FAILURE of a step that will not run now (if it has an id),
        and count it as a failed part of the chord it belongs to."""
        task_id = sig.id
        options = sig.options
        if task_id is not None:
            meta = ResultMeta.failure(
                task_id, error, traceback, worker=self.hostname, task=sig.name
            )
            reply_to = options.get("reply_to")
            await backend.store(
                StoreRequest(meta, reply_to=reply_to if isinstance(reply_to, str) else None)
            )
        chord, group_id = options.get("chord"), options.get("group_id")
        if chord and isinstance(group_id, str) and task_id is not None:
            index = options.get("group_index")
            part = ChordPart(
                group_id,
                task_id,
                index if isinstance(index, int) else None,
                State.FAILURE,
                exception_to_result(error),
            )
            await self._part_done(part, chord, backend)

    async def _part_done(
        self, part: ChordPart, chord: Mapping[str, Any], backend: ResultBackend
    ) -> None:
        join = await backend.chord_part_done(part)
        if join is not None:
            await self._finish_chord(join, self._sig(chord), backend)

    async def _finish_chord(self, join: ChordJoin, body: Signature, backend: ResultBackend) -> None:
        """Send the body with the header's results, or fail it naming the failed header task;
        then tell the backend the chord is done."""
        failed = next((p for p in join.parts if p.state in (State.FAILURE, State.REVOKED)), None)
        if failed is None:
            values = [part.result for part in join.parts]
            headers = dict(body.options.get("headers") or {})
            headers.update({CHORD_HEADER: join.group_id, CHORD_SEND_HEADER: join.claim})
            await body._apply(self.app, Partial((values,), options={"headers": headers}))
            log.info("chord %s complete: sent its body %s[%s]", join.group_id, body.name, body.id)
        else:
            cause = exception_from_result(failed.result, None)
            error = ChordError(f"Dependency {failed.task_id} raised {cause!r}")
            log.error("chord %s failed: %s; its body %s will not run", join.group_id, error, body)
            await self._fail_signature(body, error, None, backend)
            for data in _errbacks_of(body):
                if body.id is not None:
                    await self._errback(data, body.id, body.options.get("root_id"))
            for data in _sig_list(body.options.get("chain"), "chain"):
                await self._fail_signature(self._sig(data), error, None, backend)
        if not await backend.chord_done(join.group_id, join.claim):
            log.warning(
                "chord %s: the claim on its body lapsed before it was marked done", join.group_id
            )


def _errbacks_of(sig: Signature) -> Sequence[Mapping[str, Any]]:
    return _sig_list(sig.options.get("link_error"), "link_error")
