"""Beat with many entries: CPU and memory per second of schedule, and next-due-time maths.

    python benchmarks/beat.py                    # --entries 10000 --seconds 10 --broker memory

Runs one Beat with ``--entries`` entries, each on a 1 s interval, against ``--broker``
(``memory`` by default: measures beat itself; ``sqlite`` adds the broker's writes), for
``--seconds`` seconds of real time, nothing consuming the tasks (ignore_result). Reports the CPU
seconds beat used per second of schedule (every entry sending one task each second), the tasks
sent, and the peak resident memory. Then times ``next_after`` per entry for an interval, a
crontab, and a crontab in a DST zone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from conveyor import App, crontab
from conveyor.beat import Beat, parse_schedule


def build_app(entries: int, broker: str) -> App:
    schedule: dict[str, Any] = {
        f"e{i:05d}": {"task": "bench.noop", "schedule": 1.0, "options": {"queue": "bench"}}
        for i in range(entries)
    }
    return App(
        "bench-beat",
        broker=broker,
        config={"beat_schedule": schedule, "task_ignore_result": True},
    )


async def run_beat(app: App, seconds: float) -> tuple[float, float, int]:
    beat = Beat(app)
    transport = await app.atransport()
    serving = asyncio.create_task(beat.serve())
    await asyncio.sleep(1.5)  # the first round: lease taken, states loaded
    await transport.purge_queue("bench")
    cpu0, wall0 = time.process_time(), time.monotonic()
    sent = 0
    for _ in range(round(seconds)):
        await asyncio.sleep(1.0)
        # Emptied each second, so that the figures are beat's and not the queued messages'.
        sent += await transport.purge_queue("bench")
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    beat.stop()
    await serving
    sent += await transport.purge_queue("bench")
    await app.aclose()
    return cpu, wall, sent


def time_next_after(count: int) -> dict[str, float]:
    now = datetime(2024, 3, 30, 12, tzinfo=UTC)
    cases = {
        "interval 1 s": {"schedule": 1.0},
        "crontab */5 * * * *": {"schedule": crontab(minute="*/5")},
        "crontab 30 1 * * * Europe/London": {
            "schedule": crontab(minute=30, hour=1),
            "timezone": "Europe/London",
        },
    }
    results = {}
    for label, spec in cases.items():
        (entry,) = parse_schedule({"e": {"task": "t", **spec}}, "UTC")
        moment = now
        start = time.perf_counter()
        for _ in range(count):
            moment = entry.schedule.next_after(moment, entry.zone) - timedelta(seconds=0.5)
        results[label] = (time.perf_counter() - start) / count * 1e6
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--broker", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--samples", type=int, default=20_000)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = "memory://bench-beat" if options.broker == "memory" else f"sqlite://{tmp}/b.db"
        app = build_app(options.entries, url)
        cpu, wall, sent = asyncio.run(run_beat(app, options.seconds))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{options.entries} entries on 1 s schedules, {options.broker} broker, {wall:.1f} s:")
    print(f"  tasks sent: {sent} ({sent / wall:,.0f}/s; due: {options.entries}/s)")
    print(f"  CPU: {cpu / wall:.2f} s per second ({cpu / max(sent, 1) * 1e6:.1f} us per send)")
    print(f"  peak resident memory: {peak_mb:.0f} MB")
    for label, micros in time_next_after(options.samples).items():
        print(f"  next due time, {label}: {micros:.1f} us")


if __name__ == "__main__":
    main()
