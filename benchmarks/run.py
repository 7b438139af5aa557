"""Every benchmark in one command: conveyor, Celery 5 and Dramatiq on each broker that answers.

    python benchmarks/run.py [--rounds 2] [--tasks 3000] [--roundtrips 200] [--only loop,...]
        [--brokers sqlite,rabbitmq,redis] [--chart benchmarks/results.png]

For each broker that answers (the embedded SQLite file, RabbitMQ at 5672, Redis at 6379) and
each framework that has it (Celery and Dramatiq have no SQLite broker), with the same worker
process shape for all (one process, 8 threads, prefetch 4 per slot, ack after the task; see
``peers.py``), rounds interleaved (A B C A B C...) and the median of the rounds kept:

- ``loop``: ``--tasks`` no-ops sent by a plain loop of sync sends (conveyor ``send_task``,
  Celery ``send_task``, Dramatiq ``actor.send``), then a marker task; tasks/s from the first
  send to the marker's run, producer and worker at once.
- ``threads8``: the same sends from eight threads at once (a threaded web server).
- ``async500``: conveyor only (neither peer has an asyncio client): 500 coroutines awaiting
  ``asend_task``.
- ``roundtrip``: ``send_task(...).get()`` one at a time, p50 in ms (after 20 warm-up ones).
- ``io``: 1,000 tasks sleeping 10 ms each, worker at concurrency 100 (threads; conveyor-async:
  ``async def`` tasks on the worker's loop), sent by a plain loop; tasks/s until all ran.
- ``cpu``: 100 tasks of ~10 ms of Python arithmetic, worker with a process pool of 2 (Celery
  prefork, Dramatiq 2 processes x 1 thread, conveyor ``--pool processes``); tasks/s.
- ``memory``: the 8-thread worker's peak RSS (VmHWM, summed over its processes), MiB.
- ``raw``: the broker's own client publishing ``--tasks`` messages in a loop, then consuming and
  acking them (pika, redis-py, sqlite3): messages/s, the ceiling a task queue works under.

It prints one table per broker with conveyor's ratios against each peer, writes the figures to
``--json`` and draws them in ``--chart`` (PNG, matplotlib).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402  (takes HERE off sys.path again: redis.py would shadow redis-py)

SCENARIOS = ["loop", "threads8", "async500", "roundtrip", "io", "cpu", "memory"]
FRAMEWORKS = ["conveyor", "conveyor-async", "celery", "dramatiq"]
BROKERS = {"sqlite": ("embedded.py", None), "rabbitmq": ("rabbitmq.py", 5672)}
BROKERS["redis"] = ("redis.py", 6379)
IO_TASKS, IO_CONCURRENCY, CPU_TASKS, CPU_ROUNDS = 1000, 100, 100, 200_000
UNITS = {"roundtrip": "p50 ms", "memory": "MiB"}  # the others are tasks/s


def load_broker(name: str) -> tuple[peers.Broker, str]:
    script, _ = BROKERS[name]
    path = HERE / script
    spec = importlib.util.spec_from_file_location(f"{path.stem}_bench", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BROKER, str(path)


def answers(name: str) -> bool:
    port = BROKERS[name][1]
    if port is None:
        return True
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def peak_rss_mib(pid: int) -> float:
    """VmHWM of ``pid`` and its descendants, summed (MiB)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def worker_command(framework: str, module: str, queue: str, shape: str) -> list[str]:
    """``peers.worker_command`` with the shape: ``noop`` (8 threads), ``io`` (100), ``cpu``."""
    if shape == "cpu":
        if framework.startswith("conveyor"):
            return [*peers.worker_command(framework, module, queue, 2), "--pool", "processes"]
        if framework == "celery":
            command = peers.worker_command(framework, module, queue, 2)
            return [c if c != "threads" else "prefork" for c in command]
        return [
            *(sys.executable, "-m", "dramatiq", module, "--processes", "2"),
            *("--threads", "1", "--queues", queue),
        ]
    concurrency = IO_CONCURRENCY if shape == "io" else 8
    return peers.worker_command(framework, module, queue, concurrency)


class Run:
    """One framework on one broker: its producer, a temporary directory, its worker(s)."""

    def __init__(self, broker: peers.Broker, script: str, framework: str) -> None:
        self.broker, self.framework = broker, framework
        tag = uuid.uuid4().hex[:8]
        self.queue, self.prefix = f"bench_{framework}_{tag}", f"bench-{tag}:"
        self.module = f"{Path(script).stem}_bench"
        self.tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
        shutil.copy(script, self.tmp / f"{self.module}.py")
        shutil.copy(HERE / "peers.py", self.tmp / "peers.py")
        self.done_file = self.tmp / "done"
        self.count_file = Path(f"{self.done_file}.count")
        self.last_mark = 0.0
        self.env = {
            **os.environ,
            "BENCH_FRAMEWORK": framework,
            "BENCH_QUEUE": self.queue,
            "BENCH_PREFIX": self.prefix,
            "BENCH_DONE_FILE": str(self.done_file),
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(self.tmp), os.environ.get("PYTHONPATH")])
            ),
            "dramatiq_queue_prefetch": str(8 * peers.PREFETCH_MULTIPLIER),
        }
        self.producer = peers.Producer(broker, framework, self.queue, self.prefix)

    @contextmanager
    def worker(self, shape: str) -> Iterator[subprocess.Popen[bytes]]:
        self.log = self.tmp / f"worker-{shape}.log"
        if shape == "io":
            self.env["dramatiq_queue_prefetch"] = str(IO_CONCURRENCY * peers.PREFETCH_MULTIPLIER)
        with self.log.open("wb") as out:
            process = subprocess.Popen(
                worker_command(self.framework, self.module, self.queue, shape),
                env=self.env,
                cwd=self.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            yield process
        finally:
            peers.stop(process)

    def marked(self, worker: subprocess.Popen[bytes]) -> float:
        self.last_mark = peers._marked(self.done_file, worker, self.log, self.last_mark)
        return self.last_mark

    def counted(self, worker: subprocess.Popen[bytes], target: int) -> float:
        deadline = time.monotonic() + 600
        while not self.count_file.exists() or self.count_file.stat().st_size < target:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker failed:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.002)
        return time.time()

    def send(self, name: str, args: tuple[Any, ...] = ()) -> Callable[[], Any]:
        """A no-argument sync send of task ``name`` (``noop``, ``io``, ``cpu``, ``done``)."""
        f, p = self.framework, self.producer
        if f.startswith("conveyor"):
            task = f"{p.prefix}{name}" if name in ("noop", "done", "io") else f"bench.{name}"
            return lambda: p.app.send_task(task, args)
        if f == "celery":
            return lambda: p.app.send_task(f"bench.{name}", args)
        actor = p.actors[name]
        return lambda: actor.send(*args)

    def end_to_end(self, worker: subprocess.Popen[bytes], tasks: int, threads: int) -> float:
        send = self.send("noop")
        started = time.time()
        if threads == 1:
            for _ in range(tasks):
                send()
        else:
            share = tasks // threads
            pool = [
                threading.Thread(target=lambda: [send() for _ in range(share)])
                for _ in range(threads)
            ]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            tasks = share * threads
        self.send("done")()
        return tasks / (self.marked(worker) - started)

    def warm_up(self, count: int) -> None:
        """``count`` round trips once the worker answers (it may take a while to start)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                self.producer.round_trip(0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        for n in range(count):
            self.producer.round_trip(n)

    def measure(self, args: argparse.Namespace) -> dict[str, float]:
        got: dict[str, float] = {}
        only = set(args.only.split(","))
        with self.worker("noop") as worker:
            self.warm_up(20)
            if "loop" in only:
                got["loop"] = self.end_to_end(worker, args.tasks, 1)
            if "threads8" in only:
                got["threads8"] = self.end_to_end(worker, args.tasks, 8)
            if "async500" in only and self.framework.startswith("conveyor"):
                started = time.time()
                self.producer.send_noops(args.tasks)
                got["async500"] = args.tasks / (self.marked(worker) - started)
            if "roundtrip" in only:
                times = []
                for n in range(args.roundtrips):
                    t0 = time.perf_counter()
                    self.producer.round_trip(n)
                    times.append(time.perf_counter() - t0)
                got["roundtrip"] = statistics.median(times) * 1000
            got["memory"] = peak_rss_mib(worker.pid)
        counted = 0
        for shape, name, tasks, task_args in (
            ("io", "aio" if self.framework == "conveyor-async" else "io", IO_TASKS, ()),
            ("cpu", "cpu", CPU_TASKS, (CPU_ROUNDS,)),
        ):
            if shape not in only or (shape == "cpu" and self.framework == "conveyor-async"):
                continue
            with self.worker(shape) as worker:
                self.warm_up(3)
                send = self.send(name, task_args)
                started = time.time()
                for _ in range(tasks):
                    send()
                counted += tasks
                got[shape] = tasks / (self.counted(worker, counted) - started)
        return got

    def close(self) -> None:
        try:
            self.producer.close()
        finally:
            self.broker.clean_up(self.queue, self.prefix)
            shutil.rmtree(self.tmp, ignore_errors=True)


def raw_ceiling(broker: str, messages: int) -> float:
    """Publish ``messages`` with the broker's own client in a loop, then consume and ack them
    all; messages/s over both."""
    body = b'[[], {}, {"callbacks": null}]'
    name = f"bench_raw_{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    if broker == "rabbitmq":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1/"))
        channel = connection.channel()
        channel.queue_declare(name, durable=True)
        started = time.perf_counter()
        props = pika.BasicProperties(delivery_mode=2)
        for _ in range(messages):
            channel.basic_publish("", name, body, props)
        channel.basic_qos(prefetch_count=100)
        left = [messages]

        def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
            ch.basic_ack(method.delivery_tag)
            left[0] -= 1
            if not left[0]:
                ch.stop_consuming()

        channel.basic_consume(name, on_message)
        channel.start_consuming()
        elapsed = time.perf_counter() - started
        channel.queue_delete(name)
        connection.close()
    elif broker == "redis":
        import redis

        client = redis.Redis.from_url(
            os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
        )
        started = time.perf_counter()
        for _ in range(messages):
            client.lpush(name, body)
        for _ in range(messages):
            client.lmove(name, f"{name}.unacked", "RIGHT", "LEFT")
            client.lrem(f"{name}.unacked", 1, body)
        elapsed = time.perf_counter() - started
        client.delete(name, f"{name}.unacked")
        client.close()
    else:
        import sqlite3

        path = Path(tempfile.gettempdir()) / f"{name}.db"
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, body BLOB, leased INTEGER)")
        started = time.perf_counter()
        for _ in range(messages):
            db.execute("INSERT INTO m (body, leased) VALUES (?, 0)", (body,))
        for _ in range(messages):
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM m WHERE leased = 0 ORDER BY id LIMIT 1").fetchone()
            db.execute("UPDATE m SET leased = 1 WHERE id = ?", row)
            db.execute("COMMIT")
            db.execute("DELETE FROM m WHERE id = ?", row)
        elapsed = time.perf_counter() - started
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return 2 * messages / elapsed


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for package in ("conveyor", "celery", "kombu", "dramatiq", "redis", "pika"):
        try:
            found[package] = version(package)
        except Exception:
            found[package] = "-"
    return found


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def ratio(mine: float | None, other: float | None, lower_is_better: bool) -> str:
    if not mine or not other:
        return "-"
    return f"{(other / mine if lower_is_better else mine / other):.2f}x"


def print_table(broker: str, figures: dict[str, dict[str, float]]) -> None:
    frameworks = [f for f in FRAMEWORKS if f in figures]
    print(f"\n{broker}: medians; tasks/s unless marked; ratio = conveyor's advantage")
    header = f"{'':20}" + "".join(f"{f:>16}" for f in frameworks)
    print(header + f"{'vs Celery':>12}{'vs Dramatiq':>13}")
    for scenario in [*SCENARIOS, "raw"]:
        row = [figures[f].get(scenario) for f in frameworks]
        if all(v is None for v in row):
            continue
        cells = "".join(
            f"{'-' if v is None else f'{v:,.2f}' if v < 100 else f'{v:,.0f}':>16}" for v in row
        )
        lower = scenario in UNITS
        mine = figures.get("conveyor", {}).get(scenario)
        if scenario in ("async500", "io"):  # conveyor's best form of it
            best = [figures.get(f, {}).get(scenario) for f in ("conveyor", "conveyor-async")]
            mine = max((b for b in best if b), default=None)
        vs_c = ratio(
            mine,
            figures.get("celery", {}).get(scenario if scenario != "async500" else "loop"),
            lower,
        )
        vs_d = ratio(
            mine,
            figures.get("dramatiq", {}).get(scenario if scenario != "async500" else "loop"),
            lower,
        )
        label = f"{scenario} ({UNITS[scenario]})" if lower else scenario
        print(f"{label:20}{cells}{vs_c:>12}{vs_d:>13}")


def markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """The figures as one Markdown table per broker, with conveyor's ratios."""
    out = []
    for broker, figures in results.items():
        frameworks = [f for f in FRAMEWORKS if f in figures]
        peers_here = [f for f in ("celery", "dramatiq") if f in figures]
        out.append(f"**{broker}**\n")
        out.append(
            "| | "
            + " | ".join(frameworks)
            + "".join(f" | conveyor vs {p.capitalize()}" for p in peers_here)
            + " |"
        )
        out.append("|---" * (1 + len(frameworks) + len(peers_here)) + "|")
        for scenario in [*SCENARIOS, "raw"]:
            row = [figures[f].get(scenario) for f in frameworks]
            if all(v is None for v in row):
                continue
            lower = scenario in UNITS
            mine = figures.get("conveyor", {}).get(scenario)
            if scenario in ("async500", "io"):
                best = [figures.get(f, {}).get(scenario) for f in ("conveyor", "conveyor-async")]
                mine = max((b for b in best if b), default=None)
            against = "loop" if scenario == "async500" else scenario
            ratios = [ratio(mine, figures[p].get(against), lower) for p in peers_here]
            cells = ["-" if v is None else f"{v:,.2f}" if v < 100 else f"{v:,.0f}" for v in row]
            label = f"{scenario} ({UNITS[scenario]})" if lower else f"{scenario} (tasks/s)"
            if scenario == "raw":
                label = "raw client (msg/s)"
            out.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
        out.append("")
    return "\n".join(out)


def draw(results: dict[str, dict[str, dict[str, float]]], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput = ["loop", "threads8", "async500", "io", "cpu"]
    colours = {
        "conveyor": "#1f77b4",
        "conveyor-async": "#6baed6",
        "celery": "#2ca02c",
        "dramatiq": "#d62728",
    }
    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 8), squeeze=False)
    for col, (broker, figures) in enumerate(results.items()):
        ax = axes[0][col]
        frameworks = [f for f in FRAMEWORKS if f in figures]
        width = 0.8 / max(len(frameworks), 1)
        for i, f in enumerate(frameworks):
            values = [figures[f].get(s, 0) for s in throughput]
            ax.bar(
                [x + i * width for x in range(len(throughput))],
                values,
                width,
                label=f,
                color=colours[f],
            )
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(throughput))], throughput)
        ax.set_yscale("log")
        ax.set_title(f"{broker}: tasks/s (log scale)")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        labels = [f for f in frameworks if figures[f].get("roundtrip")]
        ax.bar(
            labels, [figures[f]["roundtrip"] for f in labels], color=[colours[f] for f in labels]
        )
        ax.set_title(f"{broker}: round trip p50 (ms); worker peak MiB in labels")
        for i, f in enumerate(labels):
            ax.text(
                i,
                figures[f]["roundtrip"],
                f"{figures[f].get('memory', 0):.0f} MiB",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        if "raw" in figures.get("conveyor", {}):
            ax.set_xlabel(f"raw client ceiling: {figures['conveyor']['raw']:,.0f} msg/s")
    fig.suptitle(
        f"{meta['date']}; {meta['machine']}; load (1/5/15 min) {meta['load']}\n"
        f"{meta['versions_text']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--roundtrips", type=int, default=200)
    parser.add_argument("--brokers", default="sqlite,rabbitmq,redis")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run")
    parser.add_argument("--json", default=str(HERE / "results.json"))
    parser.add_argument("--chart", default=str(HERE / "results.png"))
    parser.add_argument(
        "--report", metavar="JSON", help="only print and draw the figures of an earlier run"
    )
    args = parser.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        for b, figures in saved["results"].items():
            print_table(b, figures)
        print("\n" + markdown(saved["results"]))
        draw(saved["results"], saved["meta"], Path(args.chart))
        return
    brokers = [b for b in args.brokers.split(",") if answers(b)]
    loaded = {b: load_broker(b) for b in brokers}
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {b: {} for b in brokers}
    loads = [load_average()]
    for n in range(args.rounds):
        for b in brokers:
            for framework in args.frameworks.split(","):
                if b == "sqlite" and framework in ("celery", "dramatiq"):
                    continue
                print(f"round {n + 1}: {b} {framework}... (load {load_average()})", flush=True)
                run = Run(*loaded[b], framework)
                try:
                    got = run.measure(args)
                except Exception as exc:  # one failed run does not end the others
                    print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
                    for log in sorted(run.tmp.glob("*.log")):
                        print(f"--- {log.name}:\n{log.read_text()[-1500:]}", file=sys.stderr)
                    continue
                finally:
                    run.close()
                print("   " + ", ".join(f"{k} {v:,.2f}" for k, v in got.items()), flush=True)
                rounds[b].setdefault(framework, []).append(got)
            if "raw" in args.only or args.only == ",".join(SCENARIOS):
                raw = raw_ceiling(b, args.tasks)
                rounds[b].setdefault("raw", []).append({"raw": raw})
        loads.append(load_average())
    results: dict[str, dict[str, dict[str, float]]] = {}
    for b, by_framework in rounds.items():
        results[b] = {}
        for f, runs in by_framework.items():
            keys = {k for r in runs for k in r}
            results[b][f] = {k: statistics.median(r[k] for r in runs if k in r) for k in keys}
        raw = results[b].pop("raw", None)
        if raw is not None and "conveyor" in results[b]:
            results[b]["conveyor"]["raw"] = raw["raw"]
    found = versions()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "load": " / ".join(loads),
        "versions": found,
        "versions_text": ", ".join(f"{k} {v}" for k, v in found.items()),
        "args": vars(args),
    }
    for b, figures in results.items():
        print_table(b, figures)
    print(
        f"\n{meta['date']}; {meta['machine']}; load averages (1/5/15 min) at each round's "
        f"start and the end: {meta['load']}"
    )
    print(meta["versions_text"])
    print("\n" + markdown(results))
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    draw(results, meta, Path(args.chart))
    print(f"figures: {args.json}; chart: {args.chart}")


if __name__ == "__main__":
    main()
