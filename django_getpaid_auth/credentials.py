"""tenant -> credential: find a tenant's active credential, with zero SQL when warm.

Each process keeps a small snapshot of every credential it has used. A generation value
in the shared cache, replaced by a new random value whenever a credential is saved or
deleted or a tenant's key changes (after the transaction commits), tells every process
(not just the one that saved) when its snapshots are out of date. Generation values never
repeat, so a counter lost to a cache flush cannot come back at a value a process already
holds; a missing or malformed value is simply "unknown", and differs from every snapshot
filed under a real one. Whatever the announcements, a snapshot is re-read from the
database after ``CREDENTIAL_RECHECK_INTERVAL`` seconds: the bound on staleness for
changes that send no signal (``QuerySet.update``, raw SQL).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from django.db import models

from . import cache_backend, clock
from .conf import getpaid_settings, on_settings_reset
from .exceptions import (
    AmbiguousEnvironmentError,
    CredentialDecryptionError,
    CredentialNotFoundError,
    TenantNotFoundError,
    UnknownEnvironmentError,
)
from .scopes import split_scopes

logger = logging.getLogger("django_getpaid_auth")

TenantRef = Any  # a tenant model instance or its key string


@dataclass(frozen=True)
class CredentialSnapshot:
    """What the token layer needs from a ClientCredential; the secret stays encrypted."""

    pk: int
    tenant_id: Any
    tenant_label: str
    environment: str
    client_id: str
    secret_ciphertext: str = field(repr=False)
    scopes: tuple[str, ...]
    audience: str
    api_url: str
    secret_version: str
    generation: str | None
    loaded_at: float = field(default_factory=lambda: clock.now(), compare=False)

    def due_for_recheck(self) -> bool:
        """Old enough to be read from the database again, announced change or not."""
        return clock.now() - self.loaded_at >= getpaid_settings.typed.credential_recheck_interval

    @cached_property
    def cache_id(self) -> str:
        """Changes whenever anything that shapes the token changes (secret included)."""
        identity = "\x1f".join(
            [
                str(self.pk),
                self.client_id,
                self.environment,
                self.audience,
                " ".join(self.scopes),
                self.secret_version,
                getpaid_settings.typed.token_url,
            ]
        )
        return hashlib.sha256(identity.encode()).hexdigest()[:32]

    def cache_key(self, kind: str) -> str:
        """The namespaced cache key for ``kind`` (token, lease, ...), memoised: hot path."""
        keys: dict[str, str] = self.__dict__.setdefault("_cache_keys", {})
        key = keys.get(kind)
        if key is None:
            key = keys[kind] = cache_backend.key(f"{kind}:{self.cache_id}")
        return key

    @cached_property
    def api_scheme(self) -> str:
        return urlsplit(self.api_url).scheme.lower()

    @cached_property
    def allowed_hosts(self) -> frozenset[str]:
        """Hosts that may receive this credential's token: its API host and the allow-list."""
        hosts = {urlsplit(self.api_url).netloc.lower()}
        hosts.update(h.lower() for h in getpaid_settings.typed.allowed_api_hosts)
        return frozenset(hosts)

    def client_secret(self) -> str:
        """Decrypt the secret just before it is sent; never stored in clear."""
        from . import crypto

        try:
            return crypto.decrypt(self.secret_ciphertext)
        except crypto.InvalidToken:
            raise CredentialDecryptionError(
                f"Cannot decrypt the client secret of ClientCredential pk={self.pk} "
                f"(tenant={self.tenant_label}, environment={self.environment}): none of the "
                'configured GETPAID_AUTH["ENCRYPTION_KEYS"] fits. Add the key it was encrypted '
                "with, or enter the secret again.",
                credential_id=self.pk,
            ) from None


def snapshot_of(credential: Any, generation: str | None) -> CredentialSnapshot:
    environments = getpaid_settings.environments
    if credential.environment not in environments:
        raise UnknownEnvironmentError(
            f"{credential!r} uses environment {credential.environment!r}, which "
            'GETPAID_AUTH["ENVIRONMENTS"] does not define.'
        )
    env = environments[credential.environment]
    tenant = credential.tenant if type(credential).tenant.is_cached(credential) else None
    return CredentialSnapshot(
        pk=credential.pk,
        tenant_id=credential.tenant_id,
        tenant_label=str(tenant) if tenant is not None else str(credential.tenant_id),
        environment=credential.environment,
        client_id=credential.client_id,
        secret_ciphertext=str(credential.__dict__.get("client_secret") or ""),
        scopes=tuple(credential.scope_list),
        audience=env["AUDIENCE"],
        api_url=env["API_URL"].rstrip("/"),
        secret_version=credential.secret_version,
        generation=generation,
    )


# --- generation value shared through the cache ---------------------------------------

_generation_key: list[str] = []
_GENERATION = re.compile(r"[0-9a-f]{32}")


def generation_key() -> str:
    if not _generation_key:
        _generation_key.append(cache_backend.key("credgen"))
    return _generation_key[0]


def parse_generation(value: Any) -> str | None:
    """A generation as stored by ``bump_generation``; anything else reads as unknown."""
    return value if isinstance(value, str) and _GENERATION.fullmatch(value) else None


def read_generation() -> str | None:
    return parse_generation(cache_backend.get(generation_key()))


def bump_generation() -> None:
    """Tell every process that credentials changed: a new, never-repeating value.

    If the shared cache cannot take it now, the write is queued and replayed until it
    lands (see ``cache_backend.write_shared``): an announcement is never dropped.
    """
    if not cache_backend.write_shared("set", generation_key(), uuid.uuid4().hex, None):
        logger.warning(
            "Could not announce a getpaid credential change through cache %r; retrying in "
            "the background. Other processes see the change when it lands, and at the latest "
            "after CREDENTIAL_RECHECK_INTERVAL (%ss).",
            getpaid_settings.CACHE_ALIAS,
            getpaid_settings.CREDENTIAL_RECHECK_INTERVAL,
        )
    clear_local_snapshots()


# --- process-local snapshots ---------------------------------------------------------

_lock = threading.Lock()
_snapshots: dict[tuple[Any, ...], CredentialSnapshot] = {}


@on_settings_reset
def clear_local_snapshots() -> None:
    with _lock:
        _snapshots.clear()
        _generation_key.clear()
        _tenant_class.clear()


_tenant_class: list[type[models.Model]] = []


def _tenant_model() -> type[models.Model]:
    if not _tenant_class:
        from .models import get_tenant_model

        _tenant_class.append(get_tenant_model())
    return _tenant_class[0]


def lookup_key(tenant: TenantRef, environment: str | None) -> tuple[Any, ...]:
    if isinstance(tenant, models.Model):
        if not isinstance(tenant, _tenant_model()):
            raise TypeError(
                f"get_session/get_token got a {type(tenant).__name__}; pass a "
                f"{_tenant_model()._meta.label} instance or its "
                f"{getpaid_settings.TENANT_KEY_FIELD} string."
            )
        return ("pk", tenant.pk, environment)
    if isinstance(tenant, str):
        return ("key", tenant, environment)
    raise TypeError(
        f"get_session/get_token take a tenant instance or its "
        f"{getpaid_settings.TENANT_KEY_FIELD} string, not {type(tenant).__name__}."
    )


def cached_snapshot(tenant: TenantRef, environment: str | None) -> CredentialSnapshot | None:
    """The snapshot this process already has, without any I/O (None when due for recheck)."""
    snapshot = _snapshots.get(lookup_key(tenant, environment))
    if snapshot is None or snapshot.due_for_recheck():
        return None
    return snapshot


_UNREAD: Any = object()


def resolve(
    tenant: TenantRef, environment: str | None = None, *, generation: Any = _UNREAD
) -> CredentialSnapshot:
    """The tenant's active credential for ``environment``; SQL only when not warm.

    ``generation`` is the shared value if the caller has already read it. It must be read
    before the row: a change committed in between then shows up as a newer generation.
    """
    key = lookup_key(tenant, environment)
    if generation is _UNREAD:
        generation = read_generation()
    snapshot = _snapshots.get(key)
    if (
        snapshot is not None
        and snapshot.generation == generation
        and not snapshot.due_for_recheck()
    ):
        return snapshot
    snapshot = _load(tenant, environment, generation)
    with _lock:
        _snapshots[key] = snapshot
    return snapshot


def _tenant_filter(tenant: TenantRef) -> dict[str, Any]:
    if isinstance(tenant, models.Model):
        return {"tenant_id": tenant.pk}
    return {f"tenant__{getpaid_settings.TENANT_KEY_FIELD}": tenant}


def _describe(tenant: TenantRef) -> str:
    if isinstance(tenant, models.Model):
        return f"{tenant} (pk={tenant.pk})"
    return repr(tenant)


def _load(tenant: TenantRef, environment: str | None, generation: str | None) -> CredentialSnapshot:
    from .models import ClientCredential, get_tenant_model

    if environment is not None and environment not in getpaid_settings.environments:
        raise UnknownEnvironmentError(
            f"Unknown getpaid environment {environment!r}; configured: "
            f"{', '.join(sorted(getpaid_settings.environments))}."
        )
    rows = list(
        ClientCredential.objects.select_related("tenant").filter(
            is_active=True, **_tenant_filter(tenant)
        )
    )
    if not rows:
        tenant_model = get_tenant_model()
        if (
            isinstance(tenant, str)
            and not tenant_model._default_manager.filter(
                **{getpaid_settings.TENANT_KEY_FIELD: tenant}
            ).exists()
        ):
            raise TenantNotFoundError(
                f"No {tenant_model._meta.verbose_name} with "
                f"{getpaid_settings.TENANT_KEY_FIELD}={tenant!r}."
            )
        raise CredentialNotFoundError(
            f"Tenant {_describe(tenant)} has no active getpaid credential. "
            "Add one in the admin (getpaid client credentials)."
        )
    available = sorted(row.environment for row in rows)
    if environment is None:
        if len(rows) > 1:
            raise AmbiguousEnvironmentError(
                f"Tenant {_describe(tenant)} has active credentials for "
                f"{' and '.join(available)}; pass environment= one of them."
            )
        return snapshot_of(rows[0], generation)
    for row in rows:
        if row.environment == environment:
            return snapshot_of(row, generation)
    raise CredentialNotFoundError(
        f"Tenant {_describe(tenant)} has no active {environment} credential "
        f"(active: {', '.join(available)})."
    )


def identities_of(credential: Any) -> list[CredentialSnapshot]:
    """Snapshots under whose cache keys ``credential``'s tokens may be cached right now:
    its current identity and the one it was loaded with (before this change)."""
    try:
        snapshot = snapshot_of(credential, generation=None)
    except Exception:  # unknown environment etc.: nothing cached under it anyway
        return []
    found = [snapshot]
    loaded = getattr(credential, "_loaded_identity", None)
    if loaded and None not in loaded.values():
        environment = getpaid_settings.environments.get(loaded["environment"])
        if environment:
            found.append(
                replace(
                    snapshot,
                    environment=loaded["environment"],
                    client_id=loaded["client_id"],
                    scopes=tuple(split_scopes(loaded["scopes"])),
                    secret_version=loaded["secret_version"],
                    audience=environment["AUDIENCE"],
                )
            )
    credential._loaded_identity = {
        "environment": credential.environment,
        "client_id": credential.client_id,
        "scopes": credential.scopes,
        "secret_version": credential.secret_version,
    }
    return found
