"""Redis: conveyor against Celery 5 and Dramatiq with their Redis brokers, in one run.

    python benchmarks/redis.py [--tasks 20000] [--roundtrips 500] [--concurrency 8] [--repeat 1]

Each framework gets one worker process with the same concurrency (``--concurrency`` threads:
Celery ``-P threads``, Dramatiq ``--threads``, conveyor's default asyncio pool, which runs plain
functions in threads), prefetching 4 messages per slot, acking after the task (Celery is set to
``task_acks_late``), on the same Redis (database 15), each under a key prefix of its own that is
deleted afterwards. The benchmark process is the producer.

1. Throughput: send ``--tasks`` no-op tasks (results ignored) the way each framework sends
   fastest (Celery and Dramatiq: one ``send`` after another; conveyor: 500 coroutines calling
   ``asend_task``, each awaiting Redis's reply), then one marker task that writes the time it
   ran to a file. Throughput = tasks / (marker ran - first send), producer and worker at once.
2. Round trip: ``--roundtrips`` times, one at a time, ``send_task(...).get()`` of an echo task
   (after 20 unmeasured ones), with each framework's Redis result backend: p50 and p99.

It prints a table and conveyor's ratios against the targets (throughput >= 3x Celery's and
>= 1.5x Dramatiq's; round trip p50 <= half of Celery's). The worker processes import this file
as their app module, with ``BENCH_FRAMEWORK`` saying which framework to set up.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, this file's directory comes first on sys.path, and this file is named redis:
# take the directory out so that ``import redis`` finds redis-py. Workers import a copy of this
# file as ``redis_bench``.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

APP_MODULE = "redis_bench"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
FRAMEWORK = os.environ.get("BENCH_FRAMEWORK", "")
PREFIX = os.environ.get("BENCH_PREFIX", "bench:")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
DONE_FILE = os.environ.get("BENCH_DONE_FILE", "")
PREFETCH_MULTIPLIER = 4
IN_FLIGHT = 500  # conveyor's concurrent senders

# Celery's and Dramatiq's Redis clients call redis-py APIs it has deprecated.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def _mark_done() -> None:
    at = time.time()
    partial = Path(f"{DONE_FILE}.partial")
    partial.write_text(repr(at))
    os.replace(partial, DONE_FILE)  # the benchmark never reads a half-written file


def make_conveyor(queue: str) -> Any:
    from conveyor import App

    url = f"{REDIS_URL}?key_prefix={PREFIX}"
    app = App("bench", broker=url, result_backend=url)
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

    return app


def make_celery(queue: str) -> Any:
    from celery import Celery

    app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"global_keyprefix": PREFIX},
        result_backend_transport_options={"global_keyprefix": PREFIX},
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

    return app


def make_dramatiq(queue: str) -> dict[str, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    namespace = PREFIX.rstrip(":")
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL, namespace=namespace)))
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=queue, actor_name="bench_noop")
    def noop() -> None:
        return None

    @dramatiq.actor(queue_name=queue, actor_name="bench_echo", store_results=True)
    def echo(value: int) -> int:
        return value

    @dramatiq.actor(queue_name=queue, actor_name="bench_done")
    def done() -> None:
        _mark_done()

    return {"broker": broker, "noop": noop, "echo": echo, "done": done}


# What the worker processes import.
if FRAMEWORK.startswith("conveyor"):
    conveyor_app = make_conveyor(QUEUE)
elif FRAMEWORK == "celery":
    celery_app = make_celery(QUEUE)
elif FRAMEWORK == "dramatiq":
    dramatiq_actors = make_dramatiq(QUEUE)


def worker_command(framework: str, queue: str, concurrency: int) -> list[str]:
    if framework.startswith("conveyor"):
        return [
            *(sys.executable, "-c", "from conveyor.cli.main import main; main()"),
            *("-A", f"{APP_MODULE}:conveyor_app", "worker", "-Q", queue, "-c", str(concurrency)),
            *("--hostname", "bench@%h", "-l", "WARNING"),
        ]
    if framework == "celery":
        return [
            *(sys.executable, "-m", "celery", "-A", f"{APP_MODULE}:celery_app", "worker"),
            *("-Q", queue, "-c", str(concurrency), "-P", "threads", "-l", "WARNING"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]
    return [
        *(sys.executable, "-m", "dramatiq", APP_MODULE, "--processes", "1"),
        *("--threads", str(concurrency), "--queues", queue),
    ]


class Producer:
    """Sends the benchmark's tasks with one framework's own client API."""

    def __init__(self, framework: str, queue: str) -> None:
        self.framework = framework
        self.prefix = "bench.a" if framework == "conveyor-async" else "bench."
        if framework.startswith("conveyor"):
            self.app = make_conveyor(queue)
        elif framework == "celery":
            self.app = make_celery(queue)
        else:
            self.actors = make_dramatiq(queue)

    def send_noops(self, count: int) -> None:
        if self.framework.startswith("conveyor"):
            app, prefix = self.app, self.prefix

            async def sender(share: int) -> None:
                for _ in range(share):
                    await app.asend_task(f"{prefix}noop")

            async def send_all() -> None:
                shares = [count // IN_FLIGHT + (i < count % IN_FLIGHT) for i in range(IN_FLIGHT)]
                await asyncio.gather(*(sender(share) for share in shares))
                await app.asend_task(f"{prefix}done")

            app.run_sync(send_all())
        elif self.framework == "celery":
            for _ in range(count):
                self.app.send_task("bench.noop")
            self.app.send_task("bench.done")
        else:
            for _ in range(count):
                self.actors["noop"].send()
            self.actors["done"].send()

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


def delete_keys(prefix: str) -> None:
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


def bench(framework: str, tasks: int, roundtrips: int, concurrency: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    queue = f"bench_{framework}_{run}"
    prefix = f"bench-{run}:"
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        done_file = Path(tmp) / "done"
        os.environ.update(BENCH_QUEUE=queue, BENCH_DONE_FILE=str(done_file), BENCH_PREFIX=prefix)
        global PREFIX
        PREFIX = prefix
        shutil.copy(__file__, Path(tmp) / f"{APP_MODULE}.py")
        env = {
            **os.environ,
            "BENCH_FRAMEWORK": framework,
            "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])),
        }
        log = Path(tmp) / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                worker_command(framework, queue, concurrency),
                env=env,
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        producer = Producer(framework, queue)
        try:
            for n in range(20):  # warm up; the first one waits for the worker to start
                producer.round_trip(n)
            started = time.time()
            producer.send_noops(tasks)
            sent = time.time()
            deadline = time.monotonic() + 600
            while not done_file.exists():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{framework} worker failed:\n{log.read_text()[-3000:]}")
                time.sleep(0.005)
            finished = float(done_file.read_text())
            latencies = []
            for n in range(roundtrips):
                t0 = time.perf_counter()
                producer.round_trip(n)
                latencies.append(time.perf_counter() - t0)
        finally:
            producer.close()
            stop(worker)
            delete_keys(prefix)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "throughput": tasks / (finished - started),
        "send_rate": tasks / (sent - started),
        "p50": cuts[49] * 1000,
        "p99": cuts[98] * 1000,
    }


TARGETS = [  # (other framework, measure, conveyor/other target, at least?)
    ("celery", "throughput", 3.0, True),
    ("dramatiq", "throughput", 1.5, True),
    ("celery", "p50", 0.5, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {}
    for n in range(args.repeat):
        for framework in args.only.split(","):
            print(f"round {n + 1}: {framework}...", flush=True)
            measured = bench(framework, args.tasks, args.roundtrips, args.concurrency)
            rounds.setdefault(framework, []).append(measured)
            print("  " + ", ".join(f"{k} {v:.2f}" for k, v in measured.items()), flush=True)
    results = {
        framework: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for framework, runs in rounds.items()
    }
    print(
        f"\n{args.tasks} no-op tasks, {args.roundtrips} round trips, 1 worker process x "
        f"{args.concurrency}, Redis at {REDIS_URL.split('@')[-1]}, median of {args.repeat}\n"
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
            print(f"  {label:22} {value:6.2f}  (target {word} {target}: {verdict})")


if __name__ == "__main__":
    main()
