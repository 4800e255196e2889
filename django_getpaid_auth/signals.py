"""Signals for monitoring, and the receivers that keep caches honest.

``token_obtained``: sent with ``tenant``, ``environment``, ``expires_at``, ``duration``
(seconds the token request took), ``credential_id``.
``token_request_failed``: sent with ``tenant``, ``environment``, ``error`` (a
``TokenRequestError``), ``duration``, ``credential_id``.
Neither carries the secret or the token.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

token_obtained = Signal()
token_request_failed = Signal()


@receiver(post_save, sender="django_getpaid_auth.ClientCredential")
@receiver(post_delete, sender="django_getpaid_auth.ClientCredential")
def _credential_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A saved or deleted credential: drop its token and failure memory, reload everywhere."""
    from .credentials import credential_changed

    credential_changed(instance)
