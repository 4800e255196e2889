"""Which tenant a user acts for: the link between Django's auth and getpaid credentials."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Membership(models.Model):
    """A user belongs to exactly one tenant; the payments page uses that tenant's token."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership"
    )
    tenant = models.ForeignKey(
        settings.GETPAID_AUTH_TENANT_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )

    class Meta:
        verbose_name = "membership"
        verbose_name_plural = "memberships"

    def __str__(self) -> str:
        return f"{self.user} → {self.tenant}"
