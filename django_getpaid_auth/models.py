"""Tenants and their getpaid client credentials.

Data flows one way: tenant -> ClientCredential -> token -> request.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from . import crypto
from .conf import TENANT_MODEL_SETTING, get_tenant_model_label, getpaid_settings
from .fields import Ciphertext, EncryptedTextField
from .scopes import split_scopes, validate_scopes


class Environment(models.TextChoices):
    LIVE = "live", _("Live")
    SANDBOX = "sandbox", _("Sandbox")


class Tenant(models.Model):
    """Built-in tenant, used unless the project sets ``GETPAID_AUTH_TENANT_MODEL``."""

    name = models.CharField(_("name"), max_length=200)
    slug = models.SlugField(_("key"), max_length=100, unique=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        swappable = TENANT_MODEL_SETTING
        ordering = ["name"]
        verbose_name = _("tenant")
        verbose_name_plural = _("tenants")

    def __str__(self) -> str:
        return self.name or self.slug


def get_tenant_model() -> type[models.Model]:
    """The active tenant model (built-in ``Tenant`` or the project's own)."""
    return apps.get_model(get_tenant_model_label(), require_ready=False)


def mask(value: str, keep: int = 4) -> str:
    """``abcd…wxyz``: enough to recognise an identifier, not enough to use it."""
    if len(value) <= keep * 2:
        return value[:2] + "…" if len(value) > 2 else "…"
    return f"{value[:keep]}…{value[-keep:]}"


class ClientCredential(models.Model):
    """One tenant's getpaid OAuth client for one environment (live or sandbox)."""

    tenant = models.ForeignKey(
        get_tenant_model_label(),
        on_delete=models.CASCADE,
        related_name="getpaid_credentials",
        verbose_name=_("tenant"),
    )
    environment = models.CharField(
        _("environment"), max_length=16, choices=Environment.choices, default=Environment.SANDBOX
    )
    client_id = models.CharField(_("client ID"), max_length=255)
    client_secret = EncryptedTextField(_("client secret"))
    secret_version = models.CharField(max_length=32, editable=False, default="")
    secret_changed_at = models.DateTimeField(_("secret changed"), null=True, editable=False)
    scopes = models.TextField(
        _("requested scopes"),
        blank=True,
        validators=[validate_scopes],
        help_text=_("Space-separated getpaid scopes, e.g. payments:read accounts:read."),
    )
    is_active = models.BooleanField(_("active"), default=True)
    # The environment while active, NULL while inactive: computed by the database, so the
    # unique (tenant, active_environment) constraint below holds for every write (create,
    # QuerySet.update, raw SQL, concurrent saves) on every database, MariaDB/MySQL included,
    # where Django skips conditional unique constraints. NULLs never collide.
    active_environment = models.GeneratedField(
        expression=models.Case(models.When(is_active=True, then=models.F("environment"))),
        output_field=models.CharField(max_length=16, null=True),
        db_persist=True,
        verbose_name=_("environment while active"),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    granted_scopes = models.TextField(_("granted scopes"), blank=True, editable=False)
    last_checked_at = models.DateTimeField(_("last checked"), null=True, editable=False)
    last_check_ok = models.BooleanField(_("last check passed"), null=True, editable=False)
    last_check_error = models.TextField(_("last check error"), blank=True, editable=False)

    # Set on instances loaded from the database (from_db) or saved: the stored ciphertext,
    # and what the token cache key was built from (see credentials.credential_changed).
    _loaded_secret: str | None
    _loaded_identity: dict[str, Any]

    class Meta:
        verbose_name = _("getpaid client credential")
        verbose_name_plural = _("getpaid client credentials")
        ordering = ["tenant_id", "environment", "-is_active", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "active_environment"],
                name="getpaid_auth_one_active_credential",
                violation_error_message=_(
                    "This tenant already has an active credential for this environment."
                ),
            )
        ]
        permissions = [
            ("test_connection", _("Can test getpaid connections (requests tokens)")),
            ("clear_token", _("Can clear cached getpaid tokens")),
        ]

    def __str__(self) -> str:
        tenant = self.tenant if ClientCredential.tenant.is_cached(self) else self.tenant_id
        return f"{tenant} · {self.environment} · {mask(self.client_id)}"

    def __repr__(self) -> str:
        return (
            f"<ClientCredential pk={self.pk} tenant_id={self.tenant_id} "
            f"environment={self.environment!r} client_id={mask(self.client_id)!r} "
            f"active={self.is_active}>"
        )

    def save(self, *args: Any, **kwargs: Any) -> None:
        self._track_secret_change()
        self.scopes = " ".join(split_scopes(self.scopes))
        super().save(*args, **kwargs)

    @property
    def scope_list(self) -> list[str]:
        return split_scopes(self.scopes)

    @property
    def granted_scope_list(self) -> list[str]:
        return split_scopes(self.granted_scopes)

    @property
    def audience(self) -> str:
        return getpaid_settings.environments.get(self.environment, {}).get("AUDIENCE", "")

    @property
    def api_url(self) -> str:
        return getpaid_settings.environments.get(self.environment, {}).get("API_URL", "")

    def secret_is_stored(self) -> bool:
        return self.__dict__.get("client_secret") not in (None, "")

    @sensitive_variables()
    def _track_secret_change(self) -> None:
        """Give the secret a new version when (and only when) its plaintext changed."""
        current = self.__dict__.get("client_secret")
        loaded = getattr(self, "_loaded_secret", None)
        if isinstance(current, Ciphertext) or current is None:
            if not self.secret_version and current is not None:
                self.secret_version = uuid.uuid4().hex
            return
        if isinstance(loaded, Ciphertext):
            try:
                unchanged = crypto.decrypt(loaded) == current
            except crypto.InvalidToken:
                unchanged = False
            if unchanged:
                self.__dict__["client_secret"] = loaded
                return
        encrypted = Ciphertext(crypto.encrypt(str(current)))
        self.__dict__["client_secret"] = self._loaded_secret = encrypted
        self.secret_version = uuid.uuid4().hex
        self.secret_changed_at = timezone.now()

    def refresh_from_db(
        self,
        using: str | None = None,
        fields: Iterable[str] | None = None,
        from_queryset: models.QuerySet[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reload without decrypting: an undecryptable secret must not break a reload."""
        names = [f.attname for f in self._meta.concrete_fields]
        wanted = list(fields) if fields is not None else names
        if "client_secret" not in wanted:
            return super().refresh_from_db(
                using=using,
                fields=wanted if fields is not None else None,  # a generator is used up
                from_queryset=from_queryset,
                **kwargs,
            )
        others = [n for n in wanted if n != "client_secret"]
        if others:
            super().refresh_from_db(
                using=using, fields=others, from_queryset=from_queryset, **kwargs
            )
        manager = type(self)._base_manager.using(using or self._state.db)
        stored = manager.values_list("client_secret", flat=True).get(pk=self.pk)
        self.__dict__["client_secret"] = self._loaded_secret = stored
        return None

    @classmethod
    def from_db(
        cls, db: Any, field_names: Any, values: Any, *args: Any, **kwargs: Any
    ) -> ClientCredential:
        # *args/**kwargs: Django 6.1 passes fetch_mode, older versions nothing.
        instance = super().from_db(db, field_names, values, *args, **kwargs)
        instance._loaded_secret = instance.__dict__.get("client_secret")
        # What the token cache key was built from, so a change can delete the old token.
        instance._loaded_identity = {
            name: instance.__dict__.get(name)
            for name in ("environment", "client_id", "scopes", "secret_version")
        }
        return instance
