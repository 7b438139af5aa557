"""Settings of the example project.

The database is PostgreSQL (database ``test`` on 127.0.0.1, or ``CONVEYOR_EXAMPLE_PG_NAME``) unless
``CONVEYOR_EXAMPLE_DB=sqlite``; the broker is a SQLite file beside this project unless
``CONVEYOR_EXAMPLE_BROKER`` names another. Results go to the project's database (``django://``).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-a-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "conveyor.contrib.django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "proj.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if os.environ.get("CONVEYOR_EXAMPLE_DB", "postgresql") == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("CONVEYOR_EXAMPLE_SQLITE", str(BASE_DIR / "db.sqlite3")),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("CONVEYOR_EXAMPLE_PG_NAME", "test"),
            "USER": os.environ.get("CONVEYOR_EXAMPLE_PG_USER", "postgres"),
            "HOST": os.environ.get("CONVEYOR_EXAMPLE_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("CONVEYOR_EXAMPLE_PG_PORT", "5432"),
            # Django's test runner makes (and drops) this database
            "TEST": {"NAME": os.environ.get("CONVEYOR_EXAMPLE_PG_TEST_NAME", "test_conveyor_django")},
        }
    }

# conveyor's settings, under the CONVEYOR_ prefix (conveyor's own names, upper-cased)
CONVEYOR_BROKER_URL = os.environ.get("CONVEYOR_EXAMPLE_BROKER", f"sqlite:///{BASE_DIR}/broker.db")
CONVEYOR_RESULT_BACKEND = "django://"
CONVEYOR_TASK_DEFAULT_QUEUE = "shop"
CONVEYOR_RESULT_EXPIRES = 7 * 24 * 3600
