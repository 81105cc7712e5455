"""WSGI entry point of the control app: ``gunicorn tests.e2e.apps.worker_django_wsgi``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.apps.worker_django")

application = get_wsgi_application()
