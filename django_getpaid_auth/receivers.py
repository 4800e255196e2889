"""Receivers that keep every process's caches honest, connected in ``AppConfig.ready()``.

Changes are announced to other processes only once the transaction that made them
commits (``transaction.on_commit``): announced earlier, a process could reload the old
row in the window before the commit and keep it as current.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save

from . import service
from .conf import getpaid_settings


def credential_changed(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """A saved or deleted credential: after commit, drop its tokens and reload everywhere."""
    identities = service.identities_of(instance)  # as of this save, not as of the commit
    transaction.on_commit(lambda: service.credential_changed(identities), using=using, robust=True)


# --- tenants: what a tenant key resolves to -------------------------------------------

_KEY_UNCHANGED = "_getpaid_auth_key_unchanged"


def tenant_pre_save(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    """Note whether this save can change what ``get_session("<key>")`` resolves to."""
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


def tenant_changed(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """A tenant renamed (key changed) or deleted: after commit, every process reloads."""
    if kwargs.get("signal") is post_save and getattr(instance, _KEY_UNCHANGED, False):
        return
    transaction.on_commit(service.tenant_key_changed, using=using, robust=True)


def connect() -> None:
    """Connect every receiver (the tenant model is swappable: known only once apps load)."""
    from .models import ClientCredential, get_tenant_model

    for signal in (post_save, post_delete):
        signal.connect(
            credential_changed, sender=ClientCredential, dispatch_uid=f"getpaid_auth_cred_{signal}"
        )
    try:
        tenant_model = get_tenant_model()
    except (LookupError, ValueError):  # misconfigured: system check E006 reports it
        return
    pre_save.connect(tenant_pre_save, sender=tenant_model, dispatch_uid="getpaid_auth_tenant_pre")
    post_save.connect(tenant_changed, sender=tenant_model, dispatch_uid="getpaid_auth_tenant_save")
    post_delete.connect(
        tenant_changed, sender=tenant_model, dispatch_uid="getpaid_auth_tenant_delete"
    )
