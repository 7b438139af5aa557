"""Tasks end to end on the embedded SQLite broker: throughput and round-trip latency.

    python benchmarks/tasks_sqlite.py [--tasks 10000] [--samples 300] [--concurrency 8]

One worker process (``conveyor worker``) consumes ``default``; this process is the client.

- throughput: send N no-op tasks (sent concurrently in batches), then wait for the last one;
  tasks/s = N / (time from the first send to the last completion). Measured twice: with results
  stored in the SQLite backend (and every result read back), and with ``ignore_result`` (done
  when the queue is empty and nothing is unacked).
- latency: ``send_task(...).get()`` one at a time against the idle worker; p50, p90 and p99.

The worker module is this file itself (``-A tasks_sqlite``), so it defines the app below.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conveyor import App

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

app = App("bench")


@app.task(name="bench.noop")
async def noop() -> None:
    return None


@app.task(name="bench.noop_quiet", ignore_result=True)
async def noop_quiet() -> None:
    return None


@app.task(name="bench.echo")
def echo(value: int) -> int:
    return value


def start_worker(broker: str, concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CONVEYOR_BROKER_URL=broker)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-c",
        "from conveyor.cli.main import main; main()",
        "-A",
        "tasks_sqlite",
        "worker",
        "-c",
        str(concurrency),
        "--loglevel",
        "WARNING",
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, cwd=HERE, stdout=out, stderr=out)


async def wait_consuming(client: App, queue: str = "default") -> None:
    from conveyor.errors import NotFound

    transport = await client.atransport()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (await transport.queue_stats(queue)).consumers:
                return
        except NotFound:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("the worker did not start consuming within 30 s")


async def send_all(client: App, name: str, n: int, batch: int = 500) -> list[object]:
    results: list[object] = []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        results.extend(await asyncio.gather(*(client.asend_task(name) for _ in range(count))))
    return results


async def throughput_with_results(client: App, n: int) -> float:
    started = time.perf_counter()
    results = await send_all(client, "bench.noop", n)
    for result in results:
        await result.aget(timeout=300)  # type: ignore[attr-defined]
    return n / (time.perf_counter() - started)


async def throughput_ignored(client: App, n: int) -> float:
    transport = await client.atransport()
    started = time.perf_counter()
    await send_all(client, "bench.noop_quiet", n)
    while True:
        stats = await transport.queue_stats("default")
        if stats.ready == 0 and stats.unacked == 0:
            break
        await asyncio.sleep(0.002)
    return n / (time.perf_counter() - started)


async def latency(client: App, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        started = time.perf_counter()
        result = await client.asend_task("bench.echo", [i])
        assert await result.aget(timeout=30) == i
        out.append((time.perf_counter() - started) * 1000)
    return out


def sync_latency(client: App, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        started = time.perf_counter()
        assert client.send_task("bench.echo", [i]).get(timeout=30) == i
        out.append((time.perf_counter() - started) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        broker = f"sqlite://{Path(tmp) / 'broker.db'}"
        client = App("bench-client", broker=broker)
        worker = start_worker(broker, opts.concurrency, Path(tmp) / "worker.log")
        try:
            await wait_consuming(client)
            await latency(client, 20)  # warm up
            with_results = await throughput_with_results(client, opts.tasks)
            ignored = await throughput_ignored(client, opts.tasks)
            await asyncio.sleep(0.5)
            lat = await latency(client, opts.samples)
            sync_lat = await asyncio.to_thread(sync_latency, client, opts.samples)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
            await client.aclose()
            await asyncio.to_thread(client.close)
    n, c = opts.tasks, opts.concurrency
    print(f"SQLite broker, one worker process (-c {c}, asyncio pool), {os.cpu_count()} CPUs")
    print(f"throughput, {n} no-op tasks, results stored and read: {with_results:,.0f} tasks/s")
    print(f"throughput, {n} no-op tasks, ignore_result:          {ignored:,.0f} tasks/s")
    for label, values in (("async", lat), ("sync ", sync_lat)):
        p50, p90, p99 = statistics.median(values), pct(values, 0.9), pct(values, 0.99)
        print(
            f"latency send_task().get() {label}, {len(values)} samples: "
            f"p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
