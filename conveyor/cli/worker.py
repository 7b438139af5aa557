"""``conveyor -A module[:app] worker``: consume queues and run the app's tasks."""

from __future__ import annotations

import asyncio

import click

from conveyor.cli.banner import announce
from conveyor.cli.loading import AppRef, app_from_context
from conveyor.cli.log_options import log_options, setup_logging
from conveyor.worker import Worker

__all__ = ["worker"]


@click.command("worker")
@click.option(
    "-Q",
    "--queues",
    metavar="Q1,Q2",
    help="Comma-separated queues to consume (default: every queue in task_queues, else "
    "task_default_queue, as Celery's worker).",
)
@click.option(
    "-n",
    "--hostname",
    default="conveyor@%h",
    show_default=True,
    help="Worker name; %h is the host name, %n its first label, %d the domain.",
)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once.")
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["asyncio", "threads", "processes"]),
    help="Where tasks run (default: the worker_pool setting, asyncio).",
)
@click.option(
    "--prefetch-multiplier",
    type=click.IntRange(min=0),
    help="Messages prefetched per concurrency slot (0: no limit).",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    help="Seconds running tasks get to finish after SIGTERM.",
)
@click.option("-B", "--beat", "with_beat", is_flag=True, help="Also run the beat scheduler.")
@log_options
@click.option(
    "--autoscale",
    metavar="MAX,MIN",
    help="Grow the pool up to MAX tasks at once while tasks wait, shrink to MIN when idle.",
)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    help="Processes pool: replace a child after this many tasks.",
)
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(min=1),
    metavar="KIB",
    help="Processes pool: replace a child after a task leaves it above this resident memory.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    queues: str | None,
    hostname: str,
    concurrency: int | None,
    pool: str | None,
    prefetch_multiplier: int | None,
    shutdown_grace: float | None,
    with_beat: bool,
    autoscale: str | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    loglevel: str,
    logfile: str | None,
    log_format: str,
) -> None:
    """Consume QUEUES and run the app's tasks until SIGTERM (twice: at once)."""
    setup_logging(loglevel, logfile, log_format)
    app = app_from_context(ctx)
    ref = ctx.find_object(AppRef)
    spec = ref.spec if ref is not None else None
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if queues is not None and not names:
        raise click.BadParameter("give at least one queue name", param_hint="-Q")
    service = Worker(
        app,
        queues=names,
        hostname=hostname,
        concurrency=concurrency,
        pool=pool,
        prefetch_multiplier=prefetch_multiplier,
        shutdown_grace=shutdown_grace,
        app_spec=spec,
        autoscale=autoscale,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
    )
    announce(service, app_spec=spec, loglevel=loglevel, log_format=log_format)
    if with_beat:
        from conveyor.beat.service import Beat, serve_beside

        asyncio.run(serve_beside(service.serve(), Beat(app)))
        return
    asyncio.run(service.serve())
