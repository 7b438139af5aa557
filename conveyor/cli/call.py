"""``conveyor -A app call NAME``: send a task by name, optionally wait for its result."""

from __future__ import annotations

import json
from datetime import datetime

import click

from conveyor.cli.loading import app_from_context
from conveyor.cli.options import parse_json
from conveyor.errors import ConveyorError

__all__ = ["call"]


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {value}", param_hint=option) from exc


@click.command("call")
@click.argument("name")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments, a JSON list.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments, a JSON object.")
@click.option("--queue", help="Send to this queue (overrides task_routes).")
@click.option("--exchange", help="Send to this exchange.")
@click.option("--routing-key", help="Routing key for the exchange.")
@click.option("--priority", type=click.IntRange(0, 255), help="Message priority, 0..255.")
@click.option("--countdown", type=click.FloatRange(min=0), help="Run no sooner than in N seconds.")
@click.option("--eta", metavar="ISO8601", help="Run no sooner than this time.")
@click.option("--expires", type=click.FloatRange(min=0), help="Revoke if not run within N s.")
@click.option("--task-id", help="Use this task id instead of a new UUID.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.pass_context
def call(
    ctx: click.Context,
    name: str,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    exchange: str | None,
    routing_key: str | None,
    priority: int | None,
    countdown: float | None,
    eta: str | None,
    expires: float | None,
    task_id: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Send task NAME by name (its code need not be importable here) and print its id.

    With --wait, print the result as JSON; a failed task prints its error and exits 1.
    """
    app = app_from_context(ctx)
    args = parse_json(args_json, list, "--args")
    kwargs = parse_json(kwargs_json, dict, "--kwargs")
    try:
        result = app.send_task(
            name,
            args,
            kwargs,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            priority=priority,
            countdown=countdown,
            eta=_time(eta, "--eta"),
            expires=expires,
            task_id=task_id,
        )
        click.echo(result.id)
        if not wait:
            return
        try:
            value = result.get(timeout=timeout)
        except ConveyorError:
            raise
        except Exception as exc:
            click.echo(
                f"Error: task {name}[{result.id}] failed: {type(exc).__name__}: {exc}", err=True
            )
            ctx.exit(1)
        click.echo(json.dumps(value, default=repr))
    finally:
        app.close()
