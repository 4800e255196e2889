"""``EncryptedTextField``: a text column that only ever holds Fernet ciphertext.

Design (after orcasgit/django-fernet-fields, with two changes):

* Decryption is lazy. Loading a row never decrypts; reading the attribute does. A row that
  no configured key can decrypt therefore still loads, lists in the admin and saves its
  other fields unchanged; only reading the secret raises ``CredentialDecryptionError``.
* Ciphertext loaded from the database is written back as-is, so saving an unrelated field
  never re-encrypts (or loses) a secret.

Lookups other than ``isnull`` are refused: ciphertext is randomised, so a filter on it
could only ever match nothing silently.
"""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import models
from django.views.decorators.debug import sensitive_variables

from . import crypto
from .exceptions import CredentialDecryptionError, EncryptedFieldLookupError


class Ciphertext(str):
    """A value as stored in the database (still encrypted)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<Ciphertext>"


class EncryptedDescriptor:
    def __init__(self, field: EncryptedTextField) -> None:
        self.field = field

    @sensitive_variables()
    def __get__(self, instance: models.Model | None, owner: type) -> Any:
        if instance is None:
            return self
        value = instance.__dict__.get(self.field.attname)
        if isinstance(value, Ciphertext):
            try:
                return crypto.decrypt(value)
            except crypto.InvalidToken:
                raise CredentialDecryptionError(
                    f"Cannot decrypt {self.field.name} of {instance._meta.label} "
                    f"pk={instance.pk} ({describe(instance)}): none of the configured "
                    'GETPAID_AUTH["ENCRYPTION_KEYS"] fits. Add the key it was encrypted with, '
                    "or enter the secret again.",
                    credential_id=instance.pk,
                ) from None
        return value

    @sensitive_variables()
    def __set__(self, instance: models.Model, value: Any) -> None:
        instance.__dict__[self.field.attname] = value


def describe(instance: models.Model) -> str:
    """A short description without touching encrypted data or the database."""
    parts = []
    for name in ("tenant_id", "environment", "client_id"):
        value = instance.__dict__.get(name)
        if value is not None:
            parts.append(f"{name}={value}")
    return ", ".join(parts) or "unsaved"


class EncryptedTextField(models.TextField):
    """Stores ``str`` values encrypted with ``GETPAID_AUTH["ENCRYPTION_KEYS"]``."""

    descriptor_class = EncryptedDescriptor
    _refused_options = ("primary_key", "unique", "db_index")

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = super().check(**kwargs)
        for option in self._refused_options:
            if getattr(self, option if option != "unique" else "_unique", False):
                errors.append(
                    checks.Error(
                        f"EncryptedTextField does not support {option}=True.",
                        hint="Ciphertext is randomised; it cannot be indexed or compared.",
                        obj=self,
                        id="django_getpaid_auth.E100",
                    )
                )
        return errors

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return None if value is None else Ciphertext(value)

    @sensitive_variables()
    def to_python(self, value: Any) -> Any:
        if value is None or isinstance(value, Ciphertext):
            return value
        value = str(value)
        try:  # ciphertext coming back through loaddata: keep it, do not encrypt twice
            crypto.decrypt(value)
        except Exception:
            return value
        return Ciphertext(value)

    @sensitive_variables()
    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        return model_instance.__dict__.get(self.attname)

    @sensitive_variables()
    def get_db_prep_save(self, value: Any, connection: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, Ciphertext):
            return str(value)
        return crypto.encrypt(str(value))

    @sensitive_variables()
    def value_from_object(self, obj: models.Model) -> Any:
        """Serializers (dumpdata) get ciphertext, never the plaintext secret."""
        value = obj.__dict__.get(self.attname)
        if value is None or isinstance(value, Ciphertext):
            return value
        return Ciphertext(crypto.encrypt(str(value)))

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name == "isnull":
            return super().get_lookup(lookup_name)
        raise EncryptedFieldLookupError(
            f"Lookup {lookup_name!r} on encrypted field {self.name!r} is not supported: "
            "the stored ciphertext is randomised and can never match. Only isnull works."
        )

    def get_transform(self, lookup_name: str) -> Any:
        raise EncryptedFieldLookupError(
            f"Transform {lookup_name!r} on encrypted field {self.name!r} is not supported."
        )
