"""``conveyor -A app queues``: the app's queues on the broker, with counts, bindings, arguments.

The queues are the app's declared topology (``task_queues`` and the defaults) plus its
dead-letter queue, read from the broker with passive declares and queue stats, which every
broker answers. Broadcasts are shown by their fanout exchange: each worker's own queue on it is
exclusive and named at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import click
from rich import box
from rich.live import Live
from rich.table import Table

from conveyor.cli.broker import BrokerChoice, broker_option, choose_broker
from conveyor.cli.output import table_console
from conveyor.errors import NotFound
from conveyor.routing.declarations import declare
from conveyor.routing.entities import Queue
from conveyor.transports import Transport, open_transport
from conveyor.urls import redacted

__all__ = ["QueueRow", "queue_rows", "queues"]


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue as ``conveyor queues`` shows it; counts are None where the broker can't say
    (the queue does not exist yet, a broadcast's queues are the workers' own, or RabbitMQ's
    unacked count, see :func:`queue_rows`). ``kind`` is ``queue`` or ``broadcast``."""

    kind: str
    name: str
    exists: bool
    ready: int | None
    unacked: int | None
    consumers: int | None
    bindings: list[str]
    arguments: dict[str, Any]


def _bindings(queue: Queue) -> list[str]:
    shown = []
    for b in queue.all_bindings:
        what = repr(b.routing_key) if not b.arguments else str(dict(b.arguments))
        shown.append(f"{b.exchange_name or '(default)'} -> {what}")
    return shown


async def queue_rows(
    transport: Transport, declared: Sequence[Queue], broadcasts: Sequence[str]
) -> list[QueueRow]:
    """Read each queue's counts from the broker, in ``declared`` order, then the broadcasts.

    On RabbitMQ ``unacked`` is None: the broker reports it only through its management API
    (the transport's own count would be this connection's, always 0 here).
    """
    unacked_known = not transport.capabilities.native_exchanges
    rows = []
    for queue in declared:
        try:
            stats = await transport.queue_stats(queue.name)
        except NotFound:
            rows.append(
                QueueRow(
                    "queue",
                    queue.name,
                    False,
                    None,
                    None,
                    None,
                    _bindings(queue),
                    dict(queue.arguments),
                )
            )
            continue
        rows.append(
            QueueRow(
                "queue",
                queue.name,
                True,
                stats.ready,
                stats.unacked if unacked_known else None,
                stats.consumers,
                _bindings(queue),
                dict(queue.arguments),
            )
        )
    for name in broadcasts:
        rows.append(
            QueueRow(
                "broadcast", name, True, None, None, None, [f"{name} (fanout), per worker"], {}
            )
        )
    return rows


def _count(row: QueueRow, value: int | None) -> str:
    if value is not None:
        return str(value)
    return "?" if row.exists and row.ready is not None else "-"


def _table(url: str, rows: Sequence[QueueRow]) -> Table:
    table = Table(box=box.SIMPLE, pad_edge=False, title=f"queues on {redacted(url)}")
    table.add_column("queue", no_wrap=True)
    for column in ("ready", "unacked", "consumers"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("bindings (exchange -> key)", no_wrap=True)
    table.add_column("arguments", overflow="fold")
    notes = []
    for row in rows:
        name = f"{row.name} (broadcast)" if row.kind == "broadcast" else row.name
        table.add_row(
            name if row.exists else f"{name} *",
            _count(row, row.ready),
            _count(row, row.unacked),
            _count(row, row.consumers),
            "\n".join(row.bindings) or "-",
            ", ".join(f"{k}={v}" for k, v in row.arguments.items()) or "-",
        )
    if any(not row.exists for row in rows):
        notes.append("*: not declared on the broker yet")
    if any(row.exists and row.unacked is None and row.ready is not None for row in rows):
        notes.append("?: RabbitMQ reports unacked counts only through its management API")
    table.caption = "\n".join(notes) or None
    return table


@click.command("queues")
@broker_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--watch", is_flag=True, help="Refresh the table in place until Ctrl-C.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="--watch."
)
@click.pass_context
def queues(
    ctx: click.Context, broker: str | None, as_json: bool, watch: bool, interval: float
) -> None:
    """Show the app's queues: ready, unacked and consumer counts, bindings and arguments."""
    choice = choose_broker(ctx, broker, need_app=True)
    assert choice.app is not None
    declarations = declare(choice.app.conf)
    declared = list(declarations.topology().queues.values())
    dead_letter = choice.app.conf.task_dead_letter_queue
    if dead_letter not in declarations.queues:
        declared.append(Queue(dead_letter))
    broadcasts = list(declarations.broadcasts)
    # Ctrl-C is how --watch ends: not a failure.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_show(choice, declared, broadcasts, as_json, watch, interval))


async def _show(
    choice: BrokerChoice,
    declared: Sequence[Queue],
    broadcasts: Sequence[str],
    as_json: bool,
    watch: bool,
    interval: float,
) -> None:
    transport = open_transport(choice.url, choice.options)
    await transport.connect()
    try:
        rows = await queue_rows(transport, declared, broadcasts)
        if as_json:
            click.echo(json.dumps([asdict(row) for row in rows], indent=2, default=repr))
            return
        console = table_console()
        if not watch:
            console.print(_table(choice.url, rows))
            return
        with Live(_table(choice.url, rows), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                rows = await queue_rows(transport, declared, broadcasts)
                live.update(_table(choice.url, rows), refresh=True)
    finally:
        await transport.close()
