"""``conveyor -A app dead-letters list|show|replay|drop``: look at dead letters and act on them.

The dead-letter queue is the app's ``task_dead_letter_queue`` (``dead_letter``) unless ``-Q``
names another (e.g. a queue bound to a dead-letter exchange). How a scan keeps the queue intact
is in :mod:`conveyor.cli.dead_letter_queue`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click
from rich import box
from rich.table import Table

from conveyor.cli.broker import broker_option, choose_broker
from conveyor.cli.dead_letter_queue import DeadLetter, DeadLetterScan, scanning
from conveyor.cli.output import table_console
from conveyor.errors import TransportError
from conveyor.transports import open_transport

__all__ = ["dead_letters"]

F = TypeVar("F", bound=Callable[..., Any])


def _where(command: F) -> F:
    queue = click.option(
        "-Q",
        "--queue",
        metavar="NAME",
        help="The dead-letter queue (default: the app's task_dead_letter_queue, dead_letter).",
    )
    return queue(broker_option(command))


def _scan(
    ctx: click.Context,
    queue: str | None,
    broker: str | None,
    work: Callable[[DeadLetterScan], Awaitable[int]],
    *,
    limit: int | None = None,
) -> None:
    """Scan the dead-letter queue, run ``work`` on it, give back the rest, exit with its code."""
    choice = choose_broker(ctx, broker)
    if queue is None:
        queue = choice.app.conf.task_dead_letter_queue if choice.app else "dead_letter"

    async def run() -> int:
        transport = open_transport(choice.url, choice.options)
        await transport.connect()
        try:
            async with scanning(transport, queue, limit=limit) as scan:
                return await work(scan)
        finally:
            await transport.close()

    ctx.exit(asyncio.run(run()))


def _unknown(scan: DeadLetterScan, ids: Sequence[str]) -> list[str]:
    known = {letter.id for letter in scan.letters}
    missing = [i for i in ids if i not in known]
    for i in missing:
        click.echo(f"{i}: no such dead letter in {scan.queue!r}", err=True)
    return missing


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages workers could not run (unknown task, undecodable) or the broker dead-lettered."""


@dead_letters.command("list")
@_where
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_command(
    ctx: click.Context, queue: str | None, broker: str | None, limit: int, as_json: bool
) -> None:
    """List dead letters: id, task, the queue it came from, reason, worker and time."""

    async def show(scan: DeadLetterScan) -> int:
        if as_json:
            click.echo(json.dumps([letter.summary() for letter in scan.letters], indent=2))
            return 0
        table = Table(box=box.SIMPLE, pad_edge=False, title=f"dead letters in {scan.queue!r}")
        for column in ("id", "task", "queue"):
            table.add_column(column, no_wrap=True)
        table.add_column("reason", overflow="fold")
        for column in ("worker", "time"):
            table.add_column(column, no_wrap=True)
        for letter in scan.letters:
            time = letter.time.strftime("%Y-%m-%d %H:%M:%S") if letter.time else None
            fields = (letter.id, letter.task, letter.queue, letter.reason, letter.worker, time)
            table.add_row(*(field or "-" for field in fields))
        table_console().print(table)
        click.echo(f"{len(scan.letters)} dead letter(s)")
        return 0

    _scan(ctx, queue, broker, show, limit=limit)


@dead_letters.command("show")
@click.argument("letter_id", metavar="ID")
@_where
@click.pass_context
def show_command(ctx: click.Context, letter_id: str, queue: str | None, broker: str | None) -> None:
    """Show one dead letter's headers, properties and body, as JSON."""

    async def show(scan: DeadLetterScan) -> int:
        letters = scan.select([letter_id])
        if not letters:
            _unknown(scan, [letter_id])
            return 1
        for letter in letters:
            click.echo(json.dumps(letter.details(), indent=2, default=repr))
        return 0

    _scan(ctx, queue, broker, show)


def _settle(
    ids: Sequence[str],
    every: bool,
    task: str | None,
    act: Callable[[DeadLetterScan, DeadLetter], Awaitable[str]],
) -> Callable[[DeadLetterScan], Awaitable[int]]:
    if not ids and not every and task is None:
        raise click.UsageError("name the dead letters (ID...), or give --all or --task NAME")
    if ids and every:
        raise click.UsageError("give IDs or --all, not both")

    async def work(scan: DeadLetterScan) -> int:
        status = 1 if _unknown(scan, ids) else 0
        chosen = scan.select(ids, task=task)
        if not chosen and not ids:
            click.echo("no dead letters to act on")
        for letter in chosen:
            try:
                click.echo(await act(scan, letter))
            except TransportError as exc:
                click.echo(f"{letter.id}: kept in {scan.queue!r}: {exc}", err=True)
                status = 1
        return status

    return work


@dead_letters.command("replay")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Replay every dead letter.")
@click.option("--task", metavar="NAME", help="Only dead letters of this task.")
@_where
@click.pass_context
def replay_command(
    ctx: click.Context,
    ids: tuple[str, ...],
    every: bool,
    task: str | None,
    queue: str | None,
    broker: str | None,
) -> None:
    """Send dead letters back to the exchange and routing key they were first sent with, their
    dead-letter headers removed. Each leaves the dead-letter queue only once the broker has
    confirmed its replay; one that reaches no queue stays (exit 1)."""

    async def replay(scan: DeadLetterScan, letter: DeadLetter) -> str:
        await scan.replay(letter)
        task_name = f" ({letter.task})" if letter.task else ""
        key = letter.routing_key
        return f"replayed {letter.id}{task_name} to exchange {letter.exchange!r} key {key!r}"

    _scan(ctx, queue, broker, _settle(ids, every, task, replay))


@dead_letters.command("drop")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@_where
@click.pass_context
def drop_command(
    ctx: click.Context, ids: tuple[str, ...], queue: str | None, broker: str | None
) -> None:
    """Remove dead letters for good."""

    async def drop(scan: DeadLetterScan, letter: DeadLetter) -> str:
        await scan.drop(letter)
        return f"dropped {letter.id}"

    _scan(ctx, queue, broker, _settle(ids, False, None, drop))
