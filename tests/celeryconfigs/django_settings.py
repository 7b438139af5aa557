"""A Django settings module: Celery's settings under the CELERY namespace among Django's own."""

DEBUG = True
INSTALLED_APPS = ["django.contrib.admin"]
CELERY_BROKER_URL = "memory://celeryconfig-django"
CELERY_RESULT_BACKEND = "rpc"
CELERY_TASK_ROUTES = {"feed.*": {"queue": "feeds"}}
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
