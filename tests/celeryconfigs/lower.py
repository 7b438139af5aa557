"""A Celery-style settings module with lower-case names (the seeds' idiom)."""

from kombu import Exchange as KombuExchange  # noqa: F401  (an import is not a setting)

from conveyor import Queue

broker_url = "memory://celeryconfig-lower"
result_backend = "rpc"
task_default_queue = "default"
task_queues = [Queue("default"), Queue("feeds")]
task_routes = {"feed.*": {"queue": "feeds"}}


def route_helper() -> None:
    """A function in the module is not a setting."""
