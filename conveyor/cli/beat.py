"""``conveyor -A module beat``: run the scheduler, list its entries, pause, resume, trigger.

``conveyor -A module schedule`` is ``beat --list``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from conveyor.app import App
from conveyor.beat import Beat
from conveyor.beat.service import serve_until_signalled
from conveyor.beat.store import EntryState
from conveyor.cli.loading import app_from_context
from conveyor.cli.log_options import log_options, setup_logging
from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.routing.entities import Broadcast
from conveyor.routing.explain import explain

__all__ = ["beat", "schedule"]

_ROUTING = ("queue", "exchange", "exchange_type", "routing_key", "priority")


def _destination(app: App, task: str, args: Any, kwargs: Any, options: Any) -> dict[str, Any]:
    """Where a send of the entry goes: the ``conveyor routes explain`` answer, in short."""
    router = app.router
    given = {k: options[k] for k in _ROUTING if k in options}
    try:
        route = router.route(task, args, kwargs, options=given, task=app.tasks.get(task))
    except ConveyorError as exc:
        return {"error": str(exc)}
    ex = explain(route, router.topology())
    if ex.broadcast is not None:
        received = f"every worker consuming broadcast {ex.broadcast!r}"
    else:
        received = ", ".join(ex.queues) or "NO QUEUE"
    return {
        "exchange": route.exchange.name,
        "exchange_type": route.exchange.type.value,
        "routing_key": route.routing_key,
        "queue": route.queue_name,
        "broadcast": isinstance(route.queue, Broadcast),
        "received_by": received,
    }


async def _listing(service: Beat) -> list[dict[str, Any]]:
    store = service.store
    await store.open()
    try:
        states = await store.load()
        controls = await store.take_controls("")  # not the holder: no trigger is taken
    finally:
        await store.close()
        await service.app.aclose()
    now = datetime.now(UTC)
    rows = []
    for entry in service.entries:
        state: EntryState | None = states.get(entry.name)
        if state is not None and state.signature != entry.signature:
            state = None
        rows.append(
            {
                "entry": entry.name,
                "task": entry.task,
                "schedule": entry.schedule.describe(),
                "timezone": str(entry.zone),
                "paused": entry.name in controls.paused,
                "catchup": entry.catchup.value,
                "overlap": entry.overlap.value,
                "destination": _destination(
                    service.app, entry.task, entry.args, entry.kwargs, entry.options
                ),
                "last_due": state.last_due.isoformat() if state and state.last_due else None,
                "last_task_id": state.task_id if state else None,
                "next_due": entry.schedule.next_after(now, entry.zone).isoformat(),
            }
        )
    return rows


def _print_listing(rows: list[dict[str, Any]]) -> None:
    table = Table(title="beat_schedule")
    for column in ("entry", "task", "schedule", "goes to", "last due", "next due"):
        table.add_column(column, overflow="fold")
    for row in rows:
        dest = row["destination"]
        where = dest.get("error") or (
            f"{dest['exchange'] or '(default)'} ({dest['exchange_type']}) "
            f"key {dest['routing_key']!r} -> {dest['received_by']}"
        )
        name = row["entry"] + (" (paused)" if row["paused"] else "")
        table.add_row(
            name, row["task"], row["schedule"], where, row["last_due"] or "-", row["next_due"]
        )
    Console(soft_wrap=True).print(table)


def _show(ctx: click.Context, as_json: bool) -> None:
    service = Beat(app_from_context(ctx))
    rows = asyncio.run(_listing(service))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_listing(rows)


async def _control(service: Beat, entry: str, action: str) -> None:
    if entry not in {e.name for e in service.entries}:
        raise ConfigurationError(f"beat_schedule has no entry {entry!r}")
    store = service.store
    await store.open()
    try:
        if action == "trigger":
            await store.request_trigger(entry)
        else:
            await store.set_paused(entry, action == "pause")
    finally:
        await store.close()
        await service.app.aclose()


@click.command("beat")
@click.option("--list", "as_list", is_flag=True, help="Show the entries instead of running.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print JSON.")
@click.option("--pause", metavar="ENTRY", help="Pause ENTRY (its due times pass unsent).")
@click.option("--resume", metavar="ENTRY", help="Resume a paused ENTRY.")
@click.option("--trigger", metavar="ENTRY", help="Have the leader send ENTRY once, now.")
@log_options
@click.pass_context
def beat(
    ctx: click.Context,
    as_list: bool,
    as_json: bool,
    pause: str | None,
    resume: str | None,
    trigger: str | None,
    loglevel: str,
    logfile: str | None,
    log_format: str,
) -> None:
    """Send the app's beat_schedule entries on their schedules until SIGTERM.

    Any number of beats may run against one broker: one leads (a lease in the broker) and each
    due time is sent once.
    """
    setup_logging(loglevel, logfile, log_format)
    actions = [(a, v) for a, v in (("pause", pause), ("resume", resume), ("trigger", trigger)) if v]
    if len(actions) > 1 or (actions and as_list):
        raise click.UsageError("give one of --list, --pause, --resume, --trigger")
    if as_list or as_json:
        _show(ctx, as_json)
        return
    service = Beat(app_from_context(ctx))
    if actions:
        action, entry = actions[0]
        assert entry is not None
        asyncio.run(_control(service, entry, action))
        click.echo(f"{action}: {entry}")
        return
    asyncio.run(serve_until_signalled(service))


@click.command("schedule")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def schedule(ctx: click.Context, as_json: bool) -> None:
    """List the beat_schedule entries: schedule, destination, last and next due (beat --list)."""
    _show(ctx, as_json)
