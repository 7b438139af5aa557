"""``conveyor routes explain`` and ``conveyor routes check``: routing, made visible."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from conveyor.cli.loading import app_from_context
from conveyor.cli.options import parse_json
from conveyor.routing.entities import Broadcast
from conveyor.routing.explain import Explanation, Finding, check, explain
from conveyor.routing.router import Router

__all__ = ["routes"]


def _explanation_dict(task_name: str, registered: bool, ex: Explanation) -> dict[str, Any]:
    route = ex.route
    return {
        "task": task_name,
        "registered": registered,
        "decided_by": route.decided_by,
        "exchange": route.exchange.name,
        "exchange_type": route.exchange.type.value,
        "routing_key": route.routing_key,
        "priority": route.priority,
        "sources": dict(route.sources),
        "queue": route.queue_name,
        "queue_created_on_demand": ex.on_demand,
        "broadcast": ex.broadcast,
        "queues": list(ex.queues),
        "exchanges_tried": list(ex.exchanges),
        "reaches_a_queue": not ex.reaches_nothing,
    }


def _print_explanation(task_name: str, registered: bool, ex: Explanation) -> None:
    route = ex.route

    def value(text: str, *keys: str) -> Text:
        # Name the source only where it is not the rule that decided the route.
        others = [
            route.sources[k]
            for k in keys
            if route.sources.get(k, route.decided_by) != route.decided_by
        ]
        result = Text(text)
        if others:
            result.append(f"  (from {', '.join(dict.fromkeys(others))})", style="dim")
        return result

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    note = "" if registered else "  (not registered here: sent by name)"
    table.add_row("task", Text(task_name).append(note, style="dim"))
    table.add_row("decided by", route.decided_by)
    default = " (the default exchange)" if not route.exchange.name else ""
    table.add_row("exchange", value(repr(route.exchange.name) + default, "exchange"))
    table.add_row("exchange type", value(route.exchange.type.value, "exchange_type"))
    table.add_row("routing key", value(repr(route.routing_key), "routing_key"))
    priority = "-" if route.priority is None else str(route.priority)
    table.add_row("priority", value(priority, "priority"))
    if isinstance(route.queue, Broadcast):
        queue = f"{route.queue.name} (broadcast)"
    elif route.queue is not None:
        queue = route.queue.name + (" (created when first sent)" if ex.on_demand else "")
    else:
        queue = "-"
    table.add_row("queue", value(queue, "queue"))
    if len(ex.exchanges) > 1:
        table.add_row("alternate exchanges", " -> ".join(repr(e) for e in ex.exchanges[1:]))
    if ex.broadcast is not None:
        received = Text(f"every worker consuming broadcast {ex.broadcast!r}", style="green")
    elif ex.queues:
        received = Text(", ".join(ex.queues), style="green")
    else:
        received = Text("NO QUEUE", style="bold red")
    table.add_row("received by", received)
    Console(soft_wrap=True).print(table)


@click.group("routes")
def routes() -> None:
    """Explain where tasks go, and check the routing configuration."""


@routes.command("explain")
@click.argument("task_name")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments, a JSON list.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments, a JSON object.")
@click.option("--headers", "headers_json", metavar="JSON", help="Message headers, a JSON object.")
@click.option("--queue", help="As apply_async(queue=...).")
@click.option("--exchange", help="As apply_async(exchange=...).")
@click.option("--exchange-type", type=click.Choice(["direct", "topic", "fanout", "headers"]))
@click.option("--routing-key", help="As apply_async(routing_key=...).")
@click.option("--priority", type=click.IntRange(0, 255), help="As apply_async(priority=...).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def explain_command(
    ctx: click.Context,
    task_name: str,
    args_json: str | None,
    kwargs_json: str | None,
    headers_json: str | None,
    queue: str | None,
    exchange: str | None,
    exchange_type: str | None,
    routing_key: str | None,
    priority: int | None,
    as_json: bool,
) -> None:
    """Show where a message for TASK_NAME goes: the rule that decided, the exchange, routing key
    and priority, and the declared queues that would receive it.

    Exits 1 (with a warning on stderr) when the message would reach no queue.
    """
    app = app_from_context(ctx)
    args = parse_json(args_json, list, "--args")
    kwargs = parse_json(kwargs_json, dict, "--kwargs")
    headers = parse_json(headers_json, dict, "--headers")
    given = {
        "queue": queue,
        "exchange": exchange,
        "exchange_type": exchange_type,
        "routing_key": routing_key,
        "priority": priority,
    }
    options = {k: v for k, v in given.items() if v is not None}
    router: Router = app.router
    task = app.tasks.get(task_name)
    route = router.route(task_name, args, kwargs, options=options, task=task)
    explanation = explain(route, router.topology(), headers)
    registered = task is not None
    if as_json:
        click.echo(json.dumps(_explanation_dict(task_name, registered, explanation), indent=2))
    else:
        _print_explanation(task_name, registered, explanation)
    if explanation.reaches_nothing:
        Console(stderr=True, soft_wrap=True).print(
            Text(
                f"WARNING: a message for {task_name!r} would reach NO QUEUE and be dropped: "
                f"nothing is bound to exchange {route.exchange.name!r} "
                f"({route.exchange.type.value}) for routing key {route.routing_key!r}. "
                "Bind a queue that matches it, or route the task to a declared queue.",
                style="bold red",
            )
        )
        ctx.exit(1)


def _findings_json(findings: list[Finding]) -> dict[str, Any]:
    return {
        "findings": [
            {"severity": f.severity, "code": f.code, "subject": f.subject, "message": f.message}
            for f in findings
        ],
        "errors": sum(f.severity == "error" for f in findings),
        "warnings": sum(f.severity == "warning" for f in findings),
    }


@routes.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def check_command(ctx: click.Context, as_json: bool) -> None:
    """Lint the routing configuration against the registered tasks.

    Reports rules that can never win, routes to undeclared queues while missing-queue creation
    is off, routes that reach no queue, priorities sent to queues without x-max-priority, and
    registered tasks that fall to the default queue. Exits 1 when it finds an error.
    """
    app = app_from_context(ctx)
    tasks: Mapping[str, Any] = app.tasks
    findings = check(app.conf, tasks)
    summary = _findings_json(findings)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        console = Console(soft_wrap=True)
        if findings:
            table = Table(box=box.SIMPLE, pad_edge=False)
            table.add_column("severity", no_wrap=True)
            table.add_column("code", no_wrap=True)
            table.add_column("finding", overflow="fold")
            for f in findings:
                style = "bold red" if f.severity == "error" else "yellow"
                table.add_row(Text(f.severity, style=style), f.code, f.message)
            console.print(table)
        console.print(
            f"{summary['errors']} error(s), {summary['warnings']} warning(s) "
            f"({len(tasks)} registered task(s) checked)"
        )
    if summary["errors"]:
        ctx.exit(1)
