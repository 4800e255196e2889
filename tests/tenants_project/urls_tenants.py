"""Tenants' sites (a.tenants.test, b.tenants.test)."""

from django.urls import path

from .views import payments

urlpatterns = [path("payments/", payments)]
