"""Workflows: a group of no-op tasks and a chord, conveyor against Celery 5 on the same broker
and result backend, in one run.

    python benchmarks/workflows.py [--group 10000] [--chord 1000] [--concurrency 8] [--repeat 1]

Both frameworks use RabbitMQ (``BENCH_AMQP_URL``) as the broker and Redis (``BENCH_REDIS_URL``)
as the result backend (a chord needs one that joins). Each gets one worker process with the
same concurrency (Celery ``-P threads``; conveyor's default asyncio pool, which runs plain
functions in threads), on a fresh queue. The benchmark process is the client:

1. group: send ``--group`` no-op tasks as one group and wait for the group's results (every
   member's result is stored); the time from the first send to the last result read.
2. chord: a chord of ``--chord`` no-op header tasks whose body counts the results; the time
   from the first send to the body's result.

conveyor's client uses its async API (``aapply_async``/``aget``), Celery's its sync one (it has
no other). It prints each time and conveyor's ratio (Celery's time / conveyor's: above 1 means
conveyor is faster). This file is also the workers' app module (a copy in a temporary
directory, ``BENCH_FRAMEWORK`` saying which framework).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# benchmarks/redis.py would shadow redis-py: take this directory off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
FRAMEWORK = os.environ.get("BENCH_FRAMEWORK", "")
QUEUE = os.environ.get("BENCH_QUEUE", "bench-workflows")
EXPIRES = 600  # seconds the results of a run are kept


def make_conveyor(queue: str) -> Any:
    from conveyor import App

    app = App("bench", broker=AMQP_URL, result_backend=REDIS_URL)
    app.conf.task_default_queue = queue
    app.conf.result_expires = EXPIRES

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    @app.task(name="bench.count")
    def count(values: list[Any]) -> int:
        return len(values)

    return app


def make_celery(queue: str) -> Any:
    from celery import Celery

    app = Celery("bench", broker=AMQP_URL, backend=REDIS_URL, set_as_current=False)
    app.conf.task_default_queue = queue
    app.conf.result_expires = EXPIRES
    app.conf.worker_prefetch_multiplier = 4

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    @app.task(name="bench.count")
    def count(values: list[Any]) -> int:
        return len(values)

    return app


if FRAMEWORK == "conveyor":
    app = make_conveyor(QUEUE)
elif FRAMEWORK == "celery":
    app = make_celery(QUEUE)


def start_worker(framework: str, workdir: Path, queue: str, concurrency: int) -> Any:
    env = dict(os.environ, BENCH_FRAMEWORK=framework, BENCH_QUEUE=queue)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")]))
    if framework == "conveyor":
        cmd = [sys.executable, "-c", "from conveyor.cli.main import main; main()"]
        cmd += ["-A", "bench_workflows:app", "worker", "-Q", queue, "-c", str(concurrency)]
    else:
        cmd = [sys.executable, "-m", "celery", "-A", "bench_workflows:app", "worker"]
        cmd += ["-Q", queue, "-c", str(concurrency), "-P", "threads", "-n", f"{queue}@%h"]
        cmd += ["--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "WARNING"]
    log = (workdir / f"{framework}.log").open("wb")
    return subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=log)


async def conveyor_run(queue: str, group_size: int, chord_size: int) -> tuple[float, float]:
    from conveyor.canvas import chord, group

    client = make_conveyor(queue)
    noop, count = client.tasks["bench.noop"], client.tasks["bench.count"]
    try:
        await (await noop.s().aapply_async()).aget(timeout=60)  # the worker is up
        started = time.perf_counter()
        fanned = await group(noop.s() for _ in range(group_size)).aapply_async()
        await fanned.aget(timeout=600)
        group_time = time.perf_counter() - started
        started = time.perf_counter()
        joined = await chord([noop.s() for _ in range(chord_size)], count.s()).aapply_async()
        assert await joined.aget(timeout=600) == chord_size
        return group_time, time.perf_counter() - started
    finally:
        await client.aclose()


def celery_run(queue: str, group_size: int, chord_size: int) -> tuple[float, float]:
    from celery import chord, group

    client = make_celery(queue)
    noop, count = client.tasks["bench.noop"], client.tasks["bench.count"]
    try:
        noop.apply_async().get(timeout=60)  # the worker is up
        started = time.perf_counter()
        group(noop.s() for _ in range(group_size)).apply_async().get(timeout=600)
        group_time = time.perf_counter() - started
        started = time.perf_counter()
        result = chord([noop.s() for _ in range(chord_size)], count.s()).apply_async()
        assert result.get(timeout=600) == chord_size
        return group_time, time.perf_counter() - started
    finally:
        client.close()


def delete_queue(queue: str) -> None:
    from conveyor import App

    async def delete() -> None:
        cleanup = App(broker=AMQP_URL)
        transport = await cleanup.atransport()
        await transport.delete_queue(queue)
        await cleanup.aclose()

    asyncio.run(delete())


def measure(framework: str, workdir: Path, args: argparse.Namespace) -> tuple[float, float]:
    queue = f"bench-wf-{framework}-{uuid.uuid4().hex[:8]}"
    worker = start_worker(framework, workdir, queue, args.concurrency)
    try:
        if framework == "conveyor":
            return asyncio.run(conveyor_run(queue, args.group, args.chord))
        return celery_run(queue, args.group, args.chord)
    except BaseException:
        print((workdir / f"{framework}.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        worker.kill()
        worker.wait()
        delete_queue(queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", type=int, default=10_000)
    parser.add_argument("--chord", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        shutil.copy(Path(__file__), workdir / "bench_workflows.py")
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        for run in range(args.repeat):
            times = {fw: measure(fw, workdir, args) for fw in ("conveyor", "celery")}
            (cg, cc), (kg, kc) = times["conveyor"], times["celery"]
            print(f"run {run + 1}: RabbitMQ broker, Redis results, concurrency {args.concurrency}")
            print("| workflow | conveyor | Celery 5 | Celery / conveyor |")
            print("|---|---|---|---|")
            print(f"| group of {args.group:,} no-ops | {cg:.2f} s | {kg:.2f} s | {kg / cg:.2f}x |")
            print(f"| chord of {args.chord:,} headers | {cc:.2f} s | {kc:.2f} s | {kc / cc:.2f}x |")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
