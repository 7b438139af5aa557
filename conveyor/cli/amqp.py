"""``conveyor amqp``: the admin shell speaking the AMQP verbs, interactive or one verb at a time."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from conveyor.cli.amqp_shell import AMQPShell, Answer
from conveyor.cli.broker import broker_option, choose_broker
from conveyor.routing.declarations import settings_topology
from conveyor.transports import open_transport
from conveyor.urls import redacted

__all__ = ["amqp"]


def _print(answer: Answer, as_json: bool, *, errors_apart: bool = False) -> None:
    """Print ``answer`` as text or JSON; ``errors_apart``: a failure's text goes to stderr."""
    if as_json:
        click.echo(json.dumps(answer.as_json(), default=repr))
    else:
        click.echo(answer.text, err=errors_apart and not answer.ok)


async def read_lines(shell: AMQPShell, *, as_json: bool = False) -> int:
    """Run each line of standard input (no prompt); return the highest status of the answers."""
    worst = 0
    # Read in a thread: the transport's heartbeats go on while a slow pipe has nothing yet.
    while line := await asyncio.to_thread(sys.stdin.readline):
        if line.strip() in ("exit", "quit"):
            break
        answer = await shell.run_line(line)
        if answer is not None:
            _print(answer, as_json)
            worst = max(worst, answer.status)
    return worst


@click.command("amqp")
@click.argument("words", nargs=-1)
@broker_option
@click.option("--json", "as_json", is_flag=True, help="Answer in JSON, one object per verb.")
@click.pass_context
def amqp(ctx: click.Context, words: tuple[str, ...], broker: str | None, as_json: bool) -> None:
    """Speak the AMQP verbs to the broker: `conveyor amqp` opens a shell (type help), and
    `conveyor amqp VERB ARGS...` runs one verb, e.g. `conveyor amqp queue.declare testqueue`.

    Works the same on sqlite://, redis:// and amqp:// brokers. Exit status of a one-shot verb:
    0 done, 1 the broker refused it, 2 wrong arguments (its usage is printed). Put `--` before
    a message body that starts with a dash.
    """
    choice = choose_broker(ctx, broker)
    topology = settings_topology(choice.app.conf) if choice.app is not None else None
    interactive = not words and sys.stdin.isatty()

    async def session() -> int:
        if interactive:
            click.echo(f"-> connecting to {redacted(choice.url)}.")
        transport = open_transport(choice.url, choice.options)
        await transport.connect()
        if interactive:
            click.echo("-> connected.")
        shell = AMQPShell(
            transport,
            known_queues=topology.queues if topology else (),
            known_exchanges=topology.exchanges if topology else (),
        )
        try:
            if words:
                answer = await shell.run_words(list(words))
                _print(answer, as_json, errors_apart=True)
                return answer.status
            if interactive:
                # prompt_toolkit loads only for a terminal session, not for every command.
                from conveyor.cli.amqp_terminal import run_interactive

                return await run_interactive(shell, as_json=as_json)
            return await read_lines(shell, as_json=as_json)
        finally:
            await transport.close()

    ctx.exit(asyncio.run(session()))
