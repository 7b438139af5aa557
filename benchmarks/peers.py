"""The harness of rabbitmq.py and redis.py: conveyor, Celery 5 and Dramatiq on one broker.

Each broker's script describes its broker in a ``Broker`` and calls ``main``; the same script,
copied with this file into the run's temporary directory, is each worker process's app module
(its ``app`` attribute, set by ``worker_app`` from ``BENCH_FRAMEWORK``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# This directory also holds redis.py, which would shadow the redis package (redis-py) that the
# frameworks import: take it off the path once the script has found this module.
# (A worker's copy lives beside ``redis_bench.py`` instead, and keeps its directory on the path
# for the process pool's children.)
if (HERE / "redis.py").exists():
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
FRAMEWORK = os.environ.get("BENCH_FRAMEWORK", "")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
PREFIX = os.environ.get("BENCH_PREFIX", "bench:")
DONE_FILE = os.environ.get("BENCH_DONE_FILE", "")
PREFETCH_MULTIPLIER = 4
IN_FLIGHT = 500  # conveyor's concurrent senders, each awaiting the broker's confirm or reply
# Dramatiq's Redis result keys are hashes with no prefix to delete them by: keep them a minute.
DRAMATIQ_RESULT_TTL_MS = 60_000
TARGETS = [  # (other framework, measure, conveyor/other target, at least?)
    ("celery", "throughput", 3.0, True),
    ("dramatiq", "throughput", 1.5, True),
    ("celery", "p50", 0.5, False),
]


@dataclass(frozen=True)
class Broker:
    """What differs from one broker to the next. ``prefix`` is the run's own key prefix."""

    name: str  # as the table's heading says it
    url: str  # the address shown under the table (what follows its last ``@``)
    conveyor: Callable[[str], tuple[str, str]]  # prefix -> (broker URL, result backend URL)
    celery: Callable[[str], tuple[str, str, dict[str, Any]]]  # -> (broker, backend, more conf)
    dramatiq: Callable[[str], Any]  # prefix -> Dramatiq broker with the Results middleware
    clean_up: Callable[[str, str], None]  # (queue, prefix): delete what the run left behind


def _mark_done() -> None:
    at = time.time()
    partial = Path(f"{DONE_FILE}.partial")
    partial.write_text(repr(at))
    os.replace(partial, DONE_FILE)  # the benchmark never reads a half-written file


_count_fd: int | None = None


def _count_one() -> None:
    """Append one byte to the run's count file: the benchmark waits for its size (O_APPEND
    writes of one byte never interleave, from any thread or process)."""
    global _count_fd
    if _count_fd is None:
        _count_fd = os.open(f"{DONE_FILE}.count", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(_count_fd, b"x")


def burn(rounds: int) -> int:
    """CPU-bound work of the CPU mix: about 10 ms of Python arithmetic at 200,000 rounds."""
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return total


def make_conveyor(broker: Broker, queue: str, prefix: str) -> Any:
    from conveyor import App

    broker_url, backend_url = broker.conveyor(prefix)
    app = App("bench", broker=broker_url, result_backend=backend_url)
    app.conf.task_default_queue = queue
    app.conf.worker_prefetch_multiplier = PREFETCH_MULTIPLIER

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        return None

    @app.task(name="bench.echo")
    def echo(value: int) -> int:
        return value

    @app.task(name="bench.done", ignore_result=True)
    def done() -> None:
        _mark_done()

    # The same tasks as ``async def``: conveyor runs them on the worker's event loop.
    @app.task(name="bench.anoop", ignore_result=True)
    async def anoop() -> None:
        return None

    @app.task(name="bench.aecho")
    async def aecho(value: int) -> int:
        return value

    @app.task(name="bench.adone", ignore_result=True)
    async def adone() -> None:
        _mark_done()

    @app.task(name="bench.io", ignore_result=True)
    def io() -> None:
        time.sleep(0.01)
        _count_one()

    @app.task(name="bench.aio", ignore_result=True)
    async def aio() -> None:
        await asyncio.sleep(0.01)
        _count_one()

    @app.task(name="bench.cpu", ignore_result=True)
    def cpu(rounds: int) -> None:
        burn(rounds)
        _count_one()

    return app


def make_celery(broker: Broker, queue: str, prefix: str) -> Any:
    from celery import Celery

    broker_url, backend_url, conf = broker.celery(prefix)
    app = Celery("bench", broker=broker_url, backend=backend_url)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        **conf,
    )

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        return None

    @app.task(name="bench.echo")
    def echo(value: int) -> int:
        return value

    @app.task(name="bench.done", ignore_result=True)
    def done() -> None:
        _mark_done()

    @app.task(name="bench.io", ignore_result=True)
    def io() -> None:
        time.sleep(0.01)
        _count_one()

    @app.task(name="bench.cpu", ignore_result=True)
    def cpu(rounds: int) -> None:
        burn(rounds)
        _count_one()

    return app


def make_dramatiq(broker: Broker, queue: str, prefix: str) -> dict[str, Any]:
    import dramatiq

    dramatiq_broker = broker.dramatiq(prefix)
    dramatiq.set_broker(dramatiq_broker)

    @dramatiq.actor(queue_name=queue, actor_name="bench_noop")
    def noop() -> None:
        return None

    @dramatiq.actor(queue_name=queue, actor_name="bench_echo", store_results=True)
    def echo(value: int) -> int:
        return value

    @dramatiq.actor(queue_name=queue, actor_name="bench_done")
    def done() -> None:
        _mark_done()

    @dramatiq.actor(queue_name=queue, actor_name="bench_io")
    def io() -> None:
        time.sleep(0.01)
        _count_one()

    @dramatiq.actor(queue_name=queue, actor_name="bench_cpu")
    def cpu(rounds: int) -> None:
        burn(rounds)
        _count_one()

    return {
        "broker": dramatiq_broker,
        "noop": noop,
        "echo": echo,
        "done": done,
        "io": io,
        "cpu": cpu,
    }


def worker_app(broker: Broker) -> Any:
    """The app a worker process of ``BENCH_FRAMEWORK`` runs; None in the benchmark process."""
    if FRAMEWORK.startswith("conveyor"):
        return make_conveyor(broker, QUEUE, PREFIX)
    if FRAMEWORK == "celery":
        return make_celery(broker, QUEUE, PREFIX)
    if FRAMEWORK == "dramatiq":
        return make_dramatiq(broker, QUEUE, PREFIX)
    return None


def worker_command(framework: str, module: str, queue: str, concurrency: int) -> list[str]:
    if framework.startswith("conveyor"):
        return [
            *(sys.executable, "-c", "from conveyor.cli.main import main; main()"),
            *("-A", f"{module}:app", "worker", "-Q", queue, "-c", str(concurrency)),
            *("--hostname", "bench@%h", "-l", "WARNING"),
        ]
    if framework == "celery":
        return [
            *(sys.executable, "-m", "celery", "-A", f"{module}:app", "worker"),
            *("-Q", queue, "-c", str(concurrency), "-P", "threads", "-l", "WARNING"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]
    return [
        *(sys.executable, "-m", "dramatiq", module, "--processes", "1"),
        *("--threads", str(concurrency), "--queues", queue),
    ]


class Producer:
    """Sends the benchmark's tasks with one framework's own client API."""

    def __init__(self, broker: Broker, framework: str, queue: str, prefix: str) -> None:
        self.framework = framework
        self.prefix = "bench.a" if framework == "conveyor-async" else "bench."
        if framework.startswith("conveyor"):
            self.app = make_conveyor(broker, queue, prefix)
        elif framework == "celery":
            self.app = make_celery(broker, queue, prefix)
        else:
            self.actors = make_dramatiq(broker, queue, prefix)

    def send_marker(self) -> None:
        """One marker task: it writes the time it ran to the run's done file."""
        if self.framework.startswith("conveyor"):
            self.app.send_task(f"{self.prefix}done")
        elif self.framework == "celery":
            self.app.send_task("bench.done")
        else:
            self.actors["done"].send()

    def send_noops(self, count: int) -> None:
        """``count`` no-op tasks, then the marker."""
        if self.framework.startswith("conveyor"):
            app, prefix = self.app, self.prefix

            async def sender(share: int) -> None:
                for _ in range(share):
                    await app.asend_task(f"{prefix}noop")

            async def send_all() -> None:
                shares = [count // IN_FLIGHT + (i < count % IN_FLIGHT) for i in range(IN_FLIGHT)]
                await asyncio.gather(*(sender(share) for share in shares))

            app.run_sync(send_all())
        elif self.framework == "celery":
            for _ in range(count):
                self.app.send_task("bench.noop")
        else:
            for _ in range(count):
                self.actors["noop"].send()
        self.send_marker()

    def round_trip(self, value: int) -> None:
        if self.framework != "dramatiq":
            got = self.app.send_task(f"{self.prefix}echo", (value,)).get(timeout=30)
        else:
            got = self.actors["echo"].send(value).get_result(block=True, timeout=30_000)
        assert got == value, (self.framework, got, value)

    def close(self) -> None:
        if self.framework != "dramatiq":
            self.app.close()
        else:
            self.actors["broker"].close()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _marked(done_file: Path, worker: subprocess.Popen[bytes], log: Path, after: float) -> float:
    """Wait for the done file to hold a time other than ``after``; return that time."""
    deadline = time.monotonic() + 600
    while True:
        if done_file.exists():
            at = float(done_file.read_text())
            if at != after:
                return at
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.001)


def bench(
    broker: Broker,
    script: str,
    framework: str,
    tasks: int,
    roundtrips: int,
    concurrency: int,
    drain: bool = False,
) -> dict[str, float]:
    """One framework's figures. ``drain``: fill the queue first (a marker, the no-ops, a
    marker), then start the worker, and time it alone from the first marker to the last."""
    run = uuid.uuid4().hex[:8]
    queue = f"bench_{framework}_{run}"
    prefix = f"bench-{run}:"
    module = f"{Path(script).stem}_bench"  # never ``redis``, which would shadow redis-py
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        done_file = Path(tmp) / "done"
        shutil.copy(script, Path(tmp) / f"{module}.py")
        shutil.copy(__file__, Path(tmp) / "peers.py")
        env = {
            **os.environ,
            "BENCH_FRAMEWORK": framework,
            "BENCH_QUEUE": queue,
            "BENCH_PREFIX": prefix,
            "BENCH_DONE_FILE": str(done_file),
            "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])),
            # Dramatiq has no per-slot setting: its worker reads the whole prefetch from here
            # (its default is 2 per thread).
            "dramatiq_queue_prefetch": str(concurrency * PREFETCH_MULTIPLIER),
        }
        log = Path(tmp) / "worker.log"
        producer = Producer(broker, framework, queue, prefix)
        worker: subprocess.Popen[bytes] | None = None

        def start_worker() -> subprocess.Popen[bytes]:
            with log.open("wb") as out:
                return subprocess.Popen(
                    worker_command(framework, module, queue, concurrency),
                    env=env,
                    cwd=tmp,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )

        try:
            if drain:
                started = time.time()
                producer.send_marker()
                producer.send_noops(tasks)
                send_seconds = time.time() - started
                worker = start_worker()
                first = _marked(done_file, worker, log, after=0.0)
                work_seconds = _marked(done_file, worker, log, after=first) - first
            else:
                worker = start_worker()
            for n in range(20):  # warm up; the first one waits for the worker to start
                producer.round_trip(n)
            if not drain:
                started = time.time()
                producer.send_noops(tasks)
                send_seconds = time.time() - started
                work_seconds = _marked(done_file, worker, log, after=0.0) - started
            latencies = []
            for n in range(roundtrips):
                t0 = time.perf_counter()
                producer.round_trip(n)
                latencies.append(time.perf_counter() - t0)
        finally:
            producer.close()
            if worker is not None:
                stop(worker)
            broker.clean_up(queue, prefix)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "throughput": tasks / work_seconds,
        "send_rate": tasks / send_seconds,
        "p50": cuts[49] * 1000,
        "p99": cuts[98] * 1000,
    }


def main(broker: Broker, script: str, description: str) -> None:
    """Run the benchmark of ``script`` (the broker's script, which its workers import)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--roundtrips", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over all frameworks; medians are shown"
    )
    parser.add_argument(
        "--only",
        default="conveyor,conveyor-async,celery,dramatiq",
        help="comma-separated: conveyor (plain def tasks), conveyor-async (async def), celery, "
        "dramatiq",
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="fill the queue before starting the worker and time the worker alone (the "
        "throughput targets are for the end-to-end run, producer and worker at once)",
    )
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {}
    for n in range(args.repeat):
        for framework in args.only.split(","):
            print(f"round {n + 1}: {framework}...", flush=True)
            measured = bench(
                broker,
                script,
                framework,
                args.tasks,
                args.roundtrips,
                args.concurrency,
                drain=args.drain,
            )
            rounds.setdefault(framework, []).append(measured)
            print("  " + ", ".join(f"{k} {v:.2f}" for k, v in measured.items()), flush=True)
    results = {
        framework: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for framework, runs in rounds.items()
    }
    print(
        f"\n{args.tasks} no-op tasks, {args.roundtrips} round trips, 1 worker process x "
        f"{args.concurrency}, {broker.name} at {broker.url.split('@')[-1]}, "
        f"median of {args.repeat}; tasks/s "
        + ("of the worker alone on a filled queue" if args.drain else "end to end")
        + "\n"
    )
    print(f"{'':15} {'tasks/s':>9} {'sent/s':>9} {'rt p50 ms':>10} {'rt p99 ms':>10}")
    for framework, r in results.items():
        print(
            f"{framework:15} {r['throughput']:9.0f} {r['send_rate']:9.0f} "
            f"{r['p50']:10.2f} {r['p99']:10.2f}"
        )
    for mine in ("conveyor", "conveyor-async"):
        if mine not in results:
            continue
        print(f"\n{mine}:")
        for other, measure, target, at_least in TARGETS:
            if other not in results:
                continue
            value = results[mine][measure] / results[other][measure]
            met = value >= target if at_least else value <= target
            word = ">=" if at_least else "<="
            label = f"{measure} / {other}'s"
            verdict = "met" if met else "MISSED"
            if args.drain and measure == "throughput":
                verdict = "not judged: --drain"
            print(f"  {label:22} {value:6.2f}  (target {word} {target}: {verdict})")
