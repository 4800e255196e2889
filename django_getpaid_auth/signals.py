"""Signals for monitoring, and the receivers that keep caches honest.

``token_obtained``: sent with ``tenant``, ``environment``, ``expires_at``, ``duration``
(seconds the token request took), ``credential_id``.
``token_request_failed``: sent with ``tenant``, ``environment``, ``error`` (a
``TokenRequestError``), ``duration``, ``credential_id``.
Neither carries the secret or the token.

Changes are announced to other processes only once the transaction that made them
commits (``transaction.on_commit``): announced earlier, a process could reload the old
row in the window before the commit and keep it as current.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import Signal, receiver

token_obtained = Signal()
token_request_failed = Signal()


@receiver(post_save, sender="django_getpaid_auth.ClientCredential")
@receiver(post_delete, sender="django_getpaid_auth.ClientCredential")
def _credential_changed(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """A saved or deleted credential: after commit, drop its tokens and reload everywhere."""
    from .credentials import announce_committed_change, identities_of

    identities = identities_of(instance)  # as of this save, not as of the commit
    transaction.on_commit(lambda: announce_committed_change(identities), using=using, robust=True)


# --- tenants: what a tenant key resolves to -------------------------------------------

_KEY_UNCHANGED = "_getpaid_auth_key_unchanged"


def _tenant_pre_save(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    """Note whether this save can change what ``get_session("<key>")`` resolves to."""
    from .conf import getpaid_settings

    field = getpaid_settings.TENANT_KEY_FIELD
    update_fields = kwargs.get("update_fields")
    if raw:  # loaddata: may overwrite an existing row's key, nothing to compare cheaply
        unchanged = False
    elif update_fields is not None and field not in update_fields:
        unchanged = True
    elif instance.pk is None:
        # A new tenant takes a key nobody holds (the key is unique): nothing to reload.
        unchanged = True
    else:
        # An explicit pk may UPDATE an existing row even when _state.adding is set.
        stored = (
            sender._base_manager.using(kwargs.get("using") or instance._state.db)
            .filter(pk=instance.pk)
            .values_list(field, flat=True)
            .first()
        )
        unchanged = stored is None or stored == getattr(instance, field, None)
    setattr(instance, _KEY_UNCHANGED, unchanged)


def _tenant_changed(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """A tenant renamed (key changed) or deleted: after commit, every process reloads."""
    if kwargs.get("signal") is post_save and getattr(instance, _KEY_UNCHANGED, False):
        return
    from .credentials import bump_generation

    transaction.on_commit(bump_generation, using=using, robust=True)


def connect_tenant_receivers() -> None:
    """Called from ``AppConfig.ready()``: the tenant model is swappable, known only then."""
    from .models import get_tenant_model

    try:
        model = get_tenant_model()
    except (LookupError, ValueError):  # misconfigured: system check E006 reports it
        return
    pre_save.connect(_tenant_pre_save, sender=model, dispatch_uid="getpaid_auth_tenant_pre")
    post_save.connect(_tenant_changed, sender=model, dispatch_uid="getpaid_auth_tenant_save")
    post_delete.connect(_tenant_changed, sender=model, dispatch_uid="getpaid_auth_tenant_delete")
