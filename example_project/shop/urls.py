"""The shop's only page: the signed-in user's tenant payments."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.payments, name="payments"),
]
