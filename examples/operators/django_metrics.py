"""A Django view for /metrics: add ``path("metrics", metrics)`` to your urlpatterns."""

from django.http import HttpRequest, HttpResponse

import asyncbridge.prometheus


def metrics(request: HttpRequest) -> HttpResponse:
    body, content_type = asyncbridge.prometheus.render()
    return HttpResponse(body, content_type=content_type)
