"""Settings for the Django Tasks example: no database, one backend entry.

``TASKS`` is the only line asyncbridge needs. Swap its ``BACKEND`` for a durable one (a database
or broker backend, with its worker) when tasks must survive a crash; nothing else changes.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

TASKS = {
    "default": {
        "BACKEND": "asyncbridge.django.AsyncBridgeBackend",
        # Threads per worker process for plain `def` tasks (async ones run on the bridge loop):
        # at most this many run at once, so size it to the rate times their duration.
        "OPTIONS": {"THREADS": 8},
    }
}

# asyncbridge's messages (a refused task, the shutdown report at exit) on the console. Under
# gunicorn the hooks log the shutdown report on gunicorn's error log instead.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"asyncbridge": {"handlers": ["console"], "level": "INFO"}},
}

# Where the tasks post: a webhook receiver and an audit service.
NOTIFY_URL = os.environ.get("NOTIFY_URL", "http://127.0.0.1:8001/notify")
AUDIT_URL = os.environ.get("AUDIT_URL", NOTIFY_URL)
