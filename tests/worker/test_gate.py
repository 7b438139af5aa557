"""conveyor/worker/gate.py: who may run, by the rules, in arrival order; cancels and withdrawals
leave the counts right."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.worker.gate import Gate
from conveyor.worker.outcome import NotStarted


async def test_the_gate_lets_in_by_the_rules_in_arrival_order_and_survives_cancels() -> None:
    gate = Gate(size=1, lookahead=1)
    await gate.enter(True)
    await gate.enter(True)  # one running, one waiting in the pool
    third = asyncio.ensure_future(gate.enter(True))
    coroutine = asyncio.ensure_future(gate.enter(False))
    cancelled = asyncio.ensure_future(gate.enter(True))
    await asyncio.sleep(0)
    assert [third.done(), coroutine.done(), cancelled.done()] == [False, False, False]
    cancelled.cancel()
    gate.leave(True)
    await asyncio.sleep(0)
    assert third.done()
    assert not coroutine.done()  # a coroutine waits until no call is handed over
    gate.leave(True)
    gate.leave(True)
    await asyncio.sleep(0)
    assert coroutine.done()
    assert (gate.threaded, gate.coroutines) == (0, 1)
    let_in_then_cancelled = asyncio.ensure_future(gate.enter(True))
    await asyncio.sleep(0)
    gate.leave(False)  # lets the waiter in...
    let_in_then_cancelled.cancel()  # ...which is cancelled before it runs: it must leave
    with pytest.raises(asyncio.CancelledError):
        await let_in_then_cancelled
    assert (gate.threaded, gate.coroutines) == (0, 0)
    await gate.enter(True)
    waiting = asyncio.ensure_future(gate.enter(False))
    await asyncio.sleep(0)
    assert gate.withdraw() == 1
    with pytest.raises(NotStarted):
        await waiting
