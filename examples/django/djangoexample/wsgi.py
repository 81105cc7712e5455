"""WSGI entry point: ``gunicorn -c gunicorn.conf.py djangoexample.wsgi``.

Nothing here starts a loop: gunicorn imports this module in the master when ``preload_app`` is
on, and each worker starts its own loop in the ``post_fork`` hook (or on first ``run_soon``).
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoexample.settings")

application = get_wsgi_application()
