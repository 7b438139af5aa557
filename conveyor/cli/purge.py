"""``conveyor -A app purge``: empty the app's queues (or those named), after a confirmation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import click

from conveyor.cli.broker import BrokerChoice, broker_option, choose_broker
from conveyor.errors import NotFound
from conveyor.routing.declarations import settings_topology
from conveyor.transports import Transport, open_transport
from conveyor.urls import redacted

__all__ = ["purge"]


async def _ready_counts(transport: Transport, names: Sequence[str]) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for name in names:
        try:
            counts[name] = (await transport.queue_stats(name)).ready
        except NotFound:
            counts[name] = None
    return counts


@click.command("purge")
@click.option("-Q", "--queues", metavar="Q1,Q2", help="Purge these queues (default: the app's).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@broker_option
@click.pass_context
def purge(ctx: click.Context, queues: str | None, force: bool, broker: str | None) -> None:
    """Remove every ready message from the app's queues, or from those named with -Q.

    The dead-letter queue is purged only when named. Messages held unacked by workers stay.
    Exits 1 when a named queue does not exist.
    """
    choice = choose_broker(ctx, broker, need_app=queues is None)
    if queues is not None:
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if not names:
            raise click.BadParameter("give at least one queue name", param_hint="-Q")
    else:
        assert choice.app is not None
        names = list(settings_topology(choice.app.conf).queues)
    missing = asyncio.run(_purge(choice, names, force, named=queues is not None))
    if missing:
        ctx.exit(1)


async def _purge(choice: BrokerChoice, names: Sequence[str], force: bool, *, named: bool) -> bool:
    """Purge ``names``; True when a named queue was missing."""
    transport = open_transport(choice.url, choice.options)
    await transport.connect()
    try:
        counts = await _ready_counts(transport, names)
        present = [name for name in names if counts[name] is not None]
        for name in names:
            if counts[name] is None:
                what = "does not exist" if named else "not declared on the broker yet"
                click.echo(f"{name}: {what}", err=named)
        if not present:
            return named
        if not force:
            listing = ", ".join(f"{name} ({counts[name]} ready)" for name in present)
            question = f"Purge {listing} on {redacted(choice.url)}?"
            # click's prompt blocks: read the answer off the loop, the connection stays alive.
            if not await asyncio.to_thread(click.confirm, question):
                click.echo("nothing purged")
                return named and len(present) < len(names)
        for name in present:
            removed = await transport.purge_queue(name)
            click.echo(f"{name}: {removed} message{'s' if removed != 1 else ''} removed")
        return len(present) < len(names) and named
    finally:
        await transport.close()
