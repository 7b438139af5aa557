"""The beat store on RabbitMQ: an exclusive queue as the lease, a queue of records as the state.

The lease is the exclusive queue ``beat.<name>.leader``, declared on the connection the beat
also sends its tasks through. RabbitMQ lets one connection at a time hold an exclusive queue and
deletes it the moment that connection closes, so the lease needs no clock: a SIGKILLed leader's
socket closes and a follower's next declare succeeds. And as the lease and the sends share a
connection, a leader whose connection is gone can neither hold the lease nor send.

The state is the durable queue ``beat.<name>.state`` of JSON records: fire claims and
confirmations, snapshots, pauses, forgotten entries, trigger requests. The leader takes every
record with ``get`` and holds it unacked, so that if it dies they all return to the queue for
its successor; it merges them into its view and, every so often, publishes one snapshot and
acks the records the snapshot covers. ``beat.<name>.view`` (length 1) holds the leader's last
snapshot for ``conveyor beat --list``, which must not take records from the state queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from conveyor.beat.store import BeatStore, Controls, EntryState, Fire, decode_state, encode_state
from conveyor.errors import NotFound, PreconditionFailed
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Queue
from conveyor.transports.base import Delivery, Transport

if TYPE_CHECKING:
    from conveyor.app import App

__all__ = ["AmqpBeatStore"]

_COMPACT_AFTER = 256
_VIEW_EVERY = 2.0
_SETTLE = 0.5


def _order(state: EntryState) -> tuple[float, bool]:
    """Later due times win; of one due time, the confirmation wins over the claim."""
    due = state.last_due
    return (due.timestamp() if due is not None else float("-inf"), state.confirmed)


def _plain(state: EntryState) -> Any:
    return orjson.loads(encode_state(state))


class AmqpBeatStore(BeatStore):
    """Lease and states of beat ``beat`` on the RabbitMQ broker of ``app``."""

    def __init__(self, app: App, beat: str, *, lease: float) -> None:
        self.beat = beat
        self.lease = lease
        self._app = app
        self._leader = Queue(f"beat.{beat}.leader", exclusive=True, durable=False)
        self._state = Queue(f"beat.{beat}.state")
        self._view = Queue(
            f"beat.{beat}.view", queue_arguments={"x-overflow": "drop-head"}, max_length=1
        )
        self._holding = False
        self._held: list[Delivery] = []
        self._states: dict[str, EntryState] = {}
        self._paused: set[str] = set()
        self._view_at = 0.0

    async def _transport(self) -> Transport:
        return await self._app.atransport()

    async def open(self) -> None:
        transport = await self._transport()
        await transport.declare_queue(self._state)
        await transport.declare_queue(self._view)

    async def close(self) -> None:
        return None  # the connection is the app's, closed with it

    async def hold(self, holder: str) -> bool:
        transport = await self._transport()
        try:
            await transport.declare_queue(self._leader, passive=self._holding)
        except (PreconditionFailed, NotFound):
            self._holding = False
            self._held = []
            return False
        if not self._holding:
            self._holding = True
            self._held = []
            self._states = {}
            self._paused = set()
        return True

    async def release(self, holder: str) -> None:
        if self._holding:
            self._holding = False
            transport = await self._transport()
            await transport.delete_queue(self._leader.name)

    async def _publish(self, record: dict[str, Any], queue: str | None = None) -> None:
        transport = await self._transport()
        await transport.publish(
            Envelope(orjson.dumps(record)), routing_key=queue or self._state.name
        )

    def _merge(self, record: dict[str, Any]) -> list[str]:
        """Apply one record to the view; return the trigger requests it carries."""
        for name, raw in record.get("states", {}).items():
            state = decode_state(raw)
            known = self._states.get(name)
            if known is None or _order(state) >= _order(known):
                self._states[name] = state
        for name in record.get("forget", ()):
            self._states.pop(name, None)
        if "paused" in record:
            self._paused = set(record["paused"])
        if "pause" in record:
            self._paused.add(record["pause"])
        if "resume" in record:
            self._paused.discard(record["resume"])
        return [record["trigger"]] if "trigger" in record else []

    async def _drain(self) -> list[str]:
        """Take every record waiting in the state queue into the view; hold them unacked
        (triggers excepted: acked at once, so each is handed out once)."""
        transport = await self._transport()
        triggers: list[str] = []
        while (delivery := await transport.get(self._state.name)) is not None:
            found = self._merge(orjson.loads(delivery.envelope.body))
            if found:
                triggers += found
                await transport.ack(delivery)
            else:
                self._held.append(delivery)
        if len(self._held) > _COMPACT_AFTER:
            await self._compact()
        return triggers

    def _snapshot(self) -> dict[str, Any]:
        return {
            "states": {n: _plain(s) for n, s in self._states.items()},
            "paused": sorted(self._paused),
        }

    async def _compact(self) -> None:
        """Replace the held records by one snapshot (published, then the old ones acked)."""
        transport = await self._transport()
        await self._publish(self._snapshot())
        held, self._held = self._held, []
        await transport.ack_many(held)

    async def load(self) -> dict[str, EntryState]:
        if not self._holding:
            return await self._read_view()
        await self._drain()
        # RabbitMQ requeues a dead connection's unacked records and deletes its exclusive queue
        # in no set order: let the last leader's records come back before trusting the view.
        await asyncio.sleep(_SETTLE)
        await self._drain()
        return dict(self._states)

    async def _read_view(self) -> dict[str, EntryState]:
        transport = await self._transport()
        delivery = await transport.get(self._view.name)
        if delivery is None:
            return {}
        await transport.nack(delivery, requeue=True)
        raw = orjson.loads(delivery.envelope.body).get("states", {})
        return {name: decode_state(value) for name, value in raw.items()}

    async def _write(self, holder: str, fires: Sequence[Fire], *, confirmed: bool | None) -> bool:
        if not await self.hold(holder):
            return False
        states = {
            f.entry: f.claimed() if confirmed is None else f.state(confirmed=confirmed)
            for f in fires
        }
        await self._publish(
            {"states": {n: orjson.loads(encode_state(s)) for n, s in states.items()}}
        )
        self._states.update(states)
        return True

    async def claim(self, holder: str, fires: Sequence[Fire]) -> bool:
        return await self._write(holder, fires, confirmed=None)

    async def confirm(self, holder: str, fires: Sequence[Fire]) -> bool:
        return await self._write(holder, fires, confirmed=True)

    async def forget(self, holder: str, entries: Iterable[str]) -> None:
        names = list(entries)
        if names and await self.hold(holder):
            await self._publish({"forget": names})
            for name in names:
                self._states.pop(name, None)

    async def set_paused(self, entry: str, paused: bool) -> None:
        await self._publish({"pause": entry} if paused else {"resume": entry})

    async def request_trigger(self, entry: str) -> None:
        await self._publish({"trigger": entry})

    async def take_controls(self, holder: str) -> Controls:
        if not self._holding:
            return Controls(frozenset(), ())
        triggers = await self._drain()
        now = time.monotonic()
        if now - self._view_at >= _VIEW_EVERY:
            self._view_at = now
            await self._publish(self._snapshot(), self._view.name)
        return Controls(frozenset(self._paused), tuple(triggers))
