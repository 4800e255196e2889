"""The public token API: ``get_token`` and ``invalidate_token``, and the warm path.

The warm path costs no SQL and, most of the time, no I/O at all: each process keeps the
token it last read for at most ``LOCAL_CACHE_TIMEOUT`` seconds (and never into the
token's refresh window). After that it reads the credential generation and the token
from the shared cache together, with one ``get_many``.
"""

from __future__ import annotations

import threading
from typing import Any

from . import cache_backend, clock, credentials, token_store
from .conf import getpaid_settings, on_settings_reset
from .credentials import CredentialSnapshot, TenantRef
from .tokens import AccessToken

# lookup key -> (trusted until, snapshot, token)
_memo: dict[Any, tuple[float, CredentialSnapshot, AccessToken]] = {}
_memo_lock = threading.Lock()


@on_settings_reset
def clear_memo() -> None:
    """Forget every process-local token copy (credential saved, token invalidated, ...)."""
    with _memo_lock:
        _memo.clear()


def _remember(key: Any, snapshot: CredentialSnapshot, token: AccessToken) -> None:
    timeout = float(getpaid_settings.LOCAL_CACHE_TIMEOUT)
    if timeout <= 0:
        return
    until = min(clock.now() + timeout, token_store.refresh_time(token))
    with _memo_lock:
        _memo[key] = (until, snapshot, token)


def current_token(
    tenant: TenantRef, environment: str | None, *, force_refresh: bool = False
) -> tuple[CredentialSnapshot, AccessToken]:
    """The credential snapshot and a usable token for it, reloading what has changed."""
    key = credentials.lookup_key(tenant, environment)
    if not force_refresh:
        memo = _memo.get(key)
        if memo is not None and clock.now() < memo[0]:
            return memo[1], memo[2]
    snapshot, token = _read_through(tenant, environment, force_refresh)
    _remember(key, snapshot, token)
    return snapshot, token


def _read_through(
    tenant: TenantRef, environment: str | None, force_refresh: bool
) -> tuple[CredentialSnapshot, AccessToken]:
    snapshot = credentials.cached_snapshot(tenant, environment)
    if snapshot is None:
        snapshot = credentials.resolve(tenant, environment)
        return snapshot, token_store.get(snapshot, force_refresh=force_refresh)
    gen_key = credentials.generation_key()
    tok_key = token_store.token_key(snapshot)
    values = cache_backend.get_many([gen_key, tok_key])
    generation = credentials.parse_generation(values.get(gen_key))
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
    token_store.forget_token(snapshot)
