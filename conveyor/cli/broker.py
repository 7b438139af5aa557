"""Which broker an operations command works on, and running a coroutine against it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import click

from conveyor.app import App, default_broker_url
from conveyor.cli.loading import AppRef
from conveyor.transports import Transport, open_transport

__all__ = ["BrokerChoice", "broker_option", "choose_broker", "on_broker"]

T = TypeVar("T")

broker_option = click.option(
    "--broker",
    "broker",
    metavar="URL",
    help="Work on this broker instead of the app's (e.g. redis://127.0.0.1:6379/0).",
)


class BrokerChoice:
    """The broker URL a command uses and its transport options, with the app if one was given."""

    def __init__(self, url: str, options: Mapping[str, Any], app: App | None) -> None:
        self.url = url
        self.options = options
        self.app = app


def choose_broker(ctx: click.Context, given: str | None, *, need_app: bool = False) -> BrokerChoice:
    """``--broker`` if given, else the ``-A`` app's broker, else the default broker.

    Raises ConfigurationError when ``need_app`` and no ``-A`` was given, or the app can't load.
    """
    ref = ctx.find_object(AppRef)
    app = ref.get() if ref is not None and (ref.spec or need_app) else None
    if need_app and app is None:
        app = AppRef(None).get()
    if given:
        return BrokerChoice(given, {}, app)
    if app is not None:
        return BrokerChoice(app.broker_url, app.conf.broker_transport_options, app)
    return BrokerChoice(default_broker_url(), {}, None)


def on_broker(choice: BrokerChoice, work: Callable[[Transport], Awaitable[T]]) -> T:
    """Connect to ``choice``'s broker, run ``work`` with the transport, close, return its value.

    Raises ConfigurationError for a bad URL and BrokerUnavailable when the broker can't be reached.
    """

    async def run() -> T:
        transport = open_transport(choice.url, choice.options)
        await transport.connect()
        try:
            return await work(transport)
        finally:
            await transport.close()

    return asyncio.run(run())
