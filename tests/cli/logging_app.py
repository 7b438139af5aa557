"""A service whose tasks log, for tests/cli/test_logs.py; the broker comes from the
environment (CONVEYOR_BROKER_URL) as for any conveyor app."""

from __future__ import annotations

from conveyor import App, get_task_logger

app = App("logs", config={"task_routes": {"logs.*": {"queue": "logs_queue"}}})
log = get_task_logger(__name__)


@app.task(name="logs.plain")
def plain(word: str) -> str:
    log.info("plain says %s", word)
    log.warning("careful with %s", word)
    return word


@app.task(name="logs.coroutine")
async def coroutine(word: str) -> str:
    log.info("coroutine says %s", word)
    return word
