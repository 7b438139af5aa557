"""``conveyor demo``: the seeds' story, end to end, on one machine.

Two services in separate modules (``examples/web_service.py`` and ``examples/remote_service.py``)
that never import each other each get a worker process of their own: ``web`` consumes
``web_queue``, ``remote`` consumes ``remote_queue``, and both consume the ``broadcast`` queue.
A client that has none of their code sends ``web.*`` and ``remote.*`` tasks by name;
``task_routes`` decides where each goes. Then a priority burst, and a broadcast answered by both
workers. Everything is printed: route, worker, result. Exit status 0 only when every result
arrived.

With no ``--broker`` it uses the embedded SQLite broker in a temporary directory; give
``--broker amqp://...`` or ``--broker redis://...`` to run the same story on a server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from conveyor.app import App
from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.routing.entities import Broadcast, Queue
from conveyor.routing.router import Route

__all__ = ["demo"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SERVICES = {
    "web": ("web_service", "web_queue,broadcast"),
    "remote": ("remote_service", "remote_queue,broadcast"),
}
CLIENT_CONFIG: dict[str, Any] = {
    "task_queues": [
        Queue("web_queue", max_priority=10),
        Queue("remote_queue", max_priority=10),
        Broadcast("broadcast"),
    ],
    "task_routes": {
        "web.*": {"queue": "web_queue"},
        "remote.*": {"queue": "remote_queue"},
        "status.*": {"queue": "broadcast"},
    },
}
BURST = [("low-1", 1), ("mid-5", 5), ("top-9", 9), ("low-0", 0), ("high-7", 7), ("mid-3", 3)]


def _where(route: Route) -> str:
    exchange = route.exchange.name
    queue = route.queue.name if route.queue is not None else "-"
    return f"exchange {exchange!r}, key {route.routing_key!r} -> queue {queue!r}"


@contextlib.contextmanager
def _workers(
    broker: str, backend: str, logs: Path, console: Console
) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = dict(os.environ)
    env["CONVEYOR_BROKER_URL"] = broker
    env["CONVEYOR_RESULT_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), env.get("PYTHONPATH")]))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, (module, queues) in SERVICES.items():
            cmd = [
                sys.executable,
                "-c",
                "from conveyor.cli.main import main; main()",
                "-A",
                module,
                "worker",
                "-Q",
                queues,
                "--hostname",
                f"{name}@%h",
                "-c",
                "1",
                "--prefetch-multiplier",
                "10",
                "--loglevel",
                "INFO",
            ]
            with open(logs / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, env=env, cwd=EXAMPLES, stdout=log, stderr=log))
            console.print(f"started worker [bold]{name}[/] (pid {procs[-1].pid}) on {queues}")
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(client: App, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Each worker answers a ping on its own queue once it has declared and consumes it."""
    deadline = time.monotonic() + timeout
    for name in ("web.render_page", "remote.thumbnail"):
        result = client.send_task(name, ["ready-check"])
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise ConveyorError(f"a demo worker exited early with status {proc.returncode}")
            try:
                result.get(timeout=0.5)
                break
            except ConveyorError:
                if time.monotonic() > deadline:
                    raise
    # the broadcast queues are declared before a worker consumes anything, so both exist now


def _run_story(client: App, console: Console) -> bool:
    arrived = True
    console.print("\n[bold]tasks sent by name[/] (the client has none of their code):")
    calls: list[tuple[str, list[Any], dict[str, Any]]] = [
        ("web.render_page", ["home"], {}),
        ("remote.transcode", [], {"path": "movie.mp4"}),
        ("remote.thumbnail", ["movie.mp4"], {"size": 256}),
        ("remote.transcode", [], {"path": "movie.avi"}),
    ]
    for name, args, kwargs in calls:
        route = client.router.route(name, args, kwargs)
        result = client.send_task(name, args, kwargs)
        shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        try:
            value: Any = result.get(timeout=20, propagate=False)
            outcome = f"ran on {result.worker}: {value!r}"
        except ConveyorError as exc:
            outcome, arrived = f"[red]MISSING: {exc}[/]", False
        console.print(f"  {name}({shown})")
        console.print(f"      routed {_where(route)}  by {route.decided_by}", markup=False)
        console.print(f"      {outcome}", markup=not outcome.startswith("ran on"))

    console.print(
        "\n[bold]priority burst[/] to the web worker (concurrency 1, prefetch 10: the burst "
        "waits in its local priority buffer while it is busy):"
    )
    blocker = client.send_task("web.warm_up", [0.5], priority=10)
    burst = [(label, p, client.send_task("web.record", [label], priority=p)) for label, p in BURST]
    with contextlib.suppress(ConveyorError):
        blocker.get(timeout=20)
    ran: list[tuple[int, str, int]] = []
    for label, priority, result in burst:
        try:
            ran.append((result.get(timeout=20)["ran"], label, priority))
        except ConveyorError as exc:
            console.print(f"  {label}: MISSING ({exc})")
            arrived = False
    sent_order = ", ".join(f"{label}(p{p})" for label, p in BURST)
    run_order = ", ".join(f"{label}(p{p})" for _, label, p in sorted(ran))
    console.print(f"  sent in this order: {sent_order}")
    console.print(f"  ran in this order:  {run_order}")

    console.print("\n[bold]broadcast[/] status.report to every worker:")
    route = client.router.route("status.report")
    result = client.send_task("status.report")
    replies = result.collect(timeout=20, expected=len(SERVICES))
    console.print(f"  route: {_where(route)} ({route.decided_by})")
    for worker, value in sorted(replies.items()):
        console.print(f"  {worker}: {value!r}")
    if len(replies) != len(SERVICES):
        console.print(f"  [red]only {len(replies)} of {len(SERVICES)} workers answered[/]")
        arrived = False
    return arrived


@click.command("demo")
@click.option(
    "--broker",
    metavar="URL",
    help="Broker URL (default: an embedded SQLite broker in a temporary directory).",
)
@click.option(
    "--result-backend",
    metavar="URL",
    help="Result backend URL (default: the SQLite file, or rpc:// with another broker).",
)
def demo(broker: str | None, result_backend: str | None) -> None:
    """Run the seeds' story: two services, two workers, routing by name, priorities, broadcast."""
    if not (EXAMPLES / "web_service.py").exists():
        raise ConfigurationError(
            f"the demo's example services are not at {EXAMPLES}: run it from a clone of the "
            "repository installed with `pip install -e .`"
        )
    console = Console(soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="conveyor-demo-") as tmp:
        url = broker or f"sqlite://{Path(tmp) / 'broker.db'}"
        backend = result_backend or (
            "rpc://" if broker and not broker.startswith("sqlite") else url
        )
        console.print(f"broker: {url}\nresults: {backend}")
        client = App("client", broker=url, result_backend=backend, config=CLIENT_CONFIG)
        logs = Path(tmp)
        ok = False
        try:
            with _workers(url, backend, logs, console) as procs:
                _wait_ready(client, procs, timeout=60)
                ok = _run_story(client, console)
        finally:
            client.close()
            if not ok:
                for name in SERVICES:
                    path = logs / f"{name}.log"
                    if path.exists():
                        console.print(f"\n[bold]{name} worker log[/]:")
                        console.print(path.read_text(errors="replace")[-4000:], markup=False)
    if not ok:
        console.print("[red]some results did not arrive[/]")
        sys.exit(1)
    console.print("\n[green]every result arrived[/]")
