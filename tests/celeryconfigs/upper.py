"""Celery's upper-case names: old ones (``BROKER_URL``) and new ones under ``CELERY_``."""

CELERY_BROKER_URL = "memory://celeryconfig-upper"
CELERY_RESULT_BACKEND = "rpc"
CELERY_TASK_ROUTES = {"feed.*": {"queue": "feeds"}}
CELERY_DEFAULT_QUEUE = "default"
CELERYD_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_PRIORITI = 3
