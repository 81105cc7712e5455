"""URLs of the example project."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("orders/", views.place_order),
    path("tasks/<str:result_id>/", views.task_status),
]
