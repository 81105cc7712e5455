"""pytest set-up for the example's tests: Django's settings, before any test imports the shop."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django.setup()
