"""Settings for the asyncbridge Django example: no database, one view.

asyncbridge itself needs no settings entry: the gunicorn hooks (``gunicorn.conf.py``) start
each worker's loop and drain it at exit. Its options come from ``ASYNCBRIDGE_<NAME>``
environment variables, or from ``asyncbridge.configure()`` in ``wsgi.py``.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "djangoexample.urls"
WSGI_APPLICATION = "djangoexample.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# Where the view's background notification goes (a webhook receiver, a push service...).
NOTIFY_URL = os.environ.get("NOTIFY_URL", "http://127.0.0.1:8001/notify")
