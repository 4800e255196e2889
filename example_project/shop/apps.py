"""The demo shop: users belong to a tenant and see that tenant's getpaid payments."""

from __future__ import annotations

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    verbose_name = "Demo shop"
    default_auto_field = "django.db.models.BigAutoField"
