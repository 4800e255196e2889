"""The public token API: ``get_token`` and ``invalidate_token``, and the warm path.

The warm path (a known credential, a cached token) costs one cache round trip and no
SQL: the credential generation and the token are read together with ``get_many``.
"""

from __future__ import annotations

from . import cache_backend, credentials, token_store
from .credentials import CredentialSnapshot, TenantRef
from .tokens import AccessToken


def current_token(
    tenant: TenantRef, environment: str | None, *, force_refresh: bool = False
) -> tuple[CredentialSnapshot, AccessToken]:
    """The credential snapshot and a usable token for it, reloading what has changed."""
    snapshot = credentials.cached_snapshot(tenant, environment)
    if snapshot is None:
        snapshot = credentials.resolve(tenant, environment)
        return snapshot, token_store.get(snapshot, force_refresh=force_refresh)
    gen_key = credentials.generation_key()
    tok_key = token_store.token_key(snapshot)
    values = cache_backend.get_many([gen_key, tok_key])
    generation = values.get(gen_key)
    generation = generation if isinstance(generation, int) else 0
    if generation != snapshot.generation:
        snapshot = credentials.resolve(tenant, environment, generation=generation)
        return snapshot, token_store.get(snapshot, force_refresh=force_refresh)
    return snapshot, token_store.get(
        snapshot, force_refresh=force_refresh, cached=values.get(tok_key)
    )


def get_token(
    tenant: TenantRef, environment: str | None = None, *, force_refresh: bool = False
) -> AccessToken:
    """A valid access token for the tenant's getpaid credential.

    ``tenant`` is a tenant instance or its key (``GETPAID_AUTH["TENANT_KEY_FIELD"]``);
    ``environment`` is "live" or "sandbox" and may be omitted when the tenant has one
    active credential. ``force_refresh`` skips the cache and requests a new token.
    """
    return current_token(tenant, environment, force_refresh=force_refresh)[1]


def invalidate_token(tenant: TenantRef, environment: str | None = None) -> None:
    """Drop the tenant's cached token; the next call requests a new one."""
    snapshot = credentials.resolve(tenant, environment)
    cache_backend.delete(token_store.token_key(snapshot))
