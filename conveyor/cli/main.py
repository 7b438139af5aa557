"""The ``conveyor`` command: a click group that other modules add their commands to.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. A ConveyorError prints one
line to stderr, never a traceback.
"""

from __future__ import annotations

from typing import Any

import click

from conveyor import __version__
from conveyor.cli.amqp import amqp
from conveyor.cli.beat import beat, schedule
from conveyor.cli.call import call
from conveyor.cli.dead_letters import dead_letters
from conveyor.cli.demo import demo
from conveyor.cli.loading import AppRef
from conveyor.cli.purge import purge
from conveyor.cli.queues import queues
from conveyor.cli.routes import routes
from conveyor.cli.worker import worker
from conveyor.errors import ConfigurationError, ConveyorError

__all__ = ["main"]


class ConveyorGroup(click.Group):
    """A click group that turns ConveyorErrors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2 if isinstance(exc, ConfigurationError) else 1)


@click.group(cls=ConveyorGroup)
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="CONVEYOR_APP",
    metavar="MODULE[:ATTR]",
    help="The module holding your App (and its attribute name, default: app).",
)
@click.version_option(__version__, prog_name="conveyor")
@click.pass_context
def main(ctx: click.Context, app_spec: str | None) -> None:
    """conveyor: a distributed task queue with first-class routing."""
    ctx.obj = AppRef(app_spec)


main.add_command(routes)
main.add_command(worker)
main.add_command(call)
main.add_command(demo)
main.add_command(beat)
main.add_command(schedule)
main.add_command(amqp)
main.add_command(queues)
main.add_command(purge)
main.add_command(dead_letters)
