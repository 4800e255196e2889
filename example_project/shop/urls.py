"""The shop's page (the signed-in user's tenant payments) and its one action."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.payments, name="payments"),
    path("payments/create/", views.create_payment, name="create_payment"),
]
