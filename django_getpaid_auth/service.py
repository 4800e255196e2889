"""The service layer: the public token API, the warm path, and every way to forget.

Everything above (sessions, the admin, commands, connectivity checks, signal receivers)
calls this module only; below it, credentials, the token store and the token client
never reach back up. This module owns the process-local token memo, so every way to
forget or invalidate a token (and ``reset`` of all process state, for tests) lives here.

The warm path costs no SQL and, most of the time, no I/O at all: each process keeps the
token it last read for at most ``LOCAL_CACHE_TIMEOUT`` seconds (and never into the
token's refresh window). After that it reads the credential generation and the token
from the shared cache together, with one ``get_many``.
"""

from __future__ import annotations

import threading
from typing import Any

from . import cache_backend, clock, credentials, telemetry, tenants, token_store, usage
from .conf import getpaid_settings, on_settings_reset
from .credentials import CredentialSnapshot, TenantRef
from .token_store import CachedState
from .tokens import AccessToken

__all__ = [
    "AccessToken",
    "CachedState",
    "CredentialSnapshot",
    "TenantRef",
    "cached_states",
    "clear_memo",
    "credential_changed",
    "credential_for",
    "current_token",
    "fetch_for_check",
    "forget",
    "forget_if_current",
    "get_token",
    "identities_of",
    "invalidate_token",
    "may_refetch_after_401",
    "refresh_if_due",
    "replacement_accepted",
    "replacement_rejected",
    "reset",
    "snapshot_of",
    "tenant_key_changed",
    "tenant_or_current",
    "wait_for_background_refreshes",
]

# lookup key -> (trusted until, snapshot, token)
_memo: dict[Any, tuple[float, CredentialSnapshot, AccessToken]] = {}
_memo_lock = threading.Lock()


@on_settings_reset
def clear_memo() -> None:
    """Forget every process-local token copy (credential saved, token invalidated, ...)."""
    with _memo_lock:
        _memo.clear()


def memo_hit(key: Any) -> tuple[CredentialSnapshot, AccessToken] | None:
    """The process-local copy for ``key`` if still trusted (no I/O: the async warm path)."""
    memo = _memo.get(key)
    if memo is not None and clock.now() < memo[0]:
        return memo[1], memo[2]
    return None


def remember(key: Any, snapshot: CredentialSnapshot, token: AccessToken) -> None:
    """Keep ``token`` for ``key`` in this process (at most LOCAL_CACHE_TIMEOUT)."""
    _remember(key, snapshot, token)


def _remember(key: Any, snapshot: CredentialSnapshot, token: AccessToken) -> None:
    timeout = getpaid_settings.typed.local_cache_timeout
    if timeout <= 0:
        return
    until = min(clock.now() + timeout, token_store.refresh_time(token))
    with _memo_lock:
        _memo[key] = (until, snapshot, token)


def tenant_or_current(tenant: TenantRef | None) -> TenantRef:
    """``tenant``, or the current one from ``TENANT_RESOLVER`` when it is None."""
    return tenants.current_tenant() if tenant is None else tenant


def current_token(
    tenant: TenantRef | None, environment: str | None, *, force_refresh: bool = False
) -> tuple[CredentialSnapshot, AccessToken]:
    """The credential snapshot and a usable token for it, reloading what has changed."""
    tenant = tenant_or_current(tenant)
    key = credentials.lookup_key(tenant, environment)
    if not force_refresh:
        memo = memo_hit(key)
        if memo is not None:  # the warm path
            usage.note_used(memo[0])  # a cache write at most once a minute
            if telemetry.ENABLED:
                telemetry.memo_served(memo[0].pk, memo[0].environment)
            return memo
    if telemetry.ENABLED:
        with telemetry.token_span() as span:
            snapshot, token = _read_through(tenant, environment, force_refresh)
            span.describe(snapshot.pk, snapshot.environment)
    else:
        snapshot, token = _read_through(tenant, environment, force_refresh)
    _remember(key, snapshot, token)
    usage.note_used(snapshot)
    return snapshot, token


def _read_through(
    tenant: TenantRef, environment: str | None, force_refresh: bool
) -> tuple[CredentialSnapshot, AccessToken]:
    snapshot, cached = read_cached(tenant, environment)
    if snapshot is None:
        snapshot = credentials.resolve(tenant, environment, generation=cached)
        cached = token_store.UNSET
    return snapshot, token_store.get(snapshot, force_refresh=force_refresh, cached=cached)


_UNREAD: Any = credentials._UNREAD


def read_cached(
    tenant: TenantRef, environment: str | None
) -> tuple[CredentialSnapshot | None, Any]:
    """Cache only, no SQL: (snapshot, its cached token entry) when this process's snapshot
    is current, else (None, the generation read, or "unread") for ``resolve`` to load."""
    snapshot = credentials.cached_snapshot(tenant, environment)
    if snapshot is None:
        return None, _UNREAD
    gen_key = credentials.generation_key()
    tok_key = token_store.token_key(snapshot)
    values = cache_backend.get_many([gen_key, tok_key])
    generation = credentials.parse_generation(values.get(gen_key))
    if generation != snapshot.generation:
        return None, generation
    return snapshot, values.get(tok_key)


def resolve(tenant: TenantRef, environment: str | None, generation: Any) -> CredentialSnapshot:
    """The credential snapshot, from the database when not current (``generation`` as
    returned by ``read_cached``)."""
    return credentials.resolve(tenant, environment, generation=generation)


def peek(snapshot: CredentialSnapshot, cached: Any = token_store.UNSET) -> AccessToken | None:
    """The cached token if usable (starting a background refresh in its refresh window)."""
    return token_store.peek(snapshot, cached=cached)


def get_token(
    tenant: TenantRef | None = None, environment: str | None = None, *, force_refresh: bool = False
) -> AccessToken:
    """A valid access token for the tenant's getpaid credential.

    ``tenant`` is a tenant instance or its key (``GETPAID_AUTH["TENANT_KEY_FIELD"]``), or
    ``None`` for the current tenant (``GETPAID_AUTH["TENANT_RESOLVER"]``);
    ``environment`` is "live" or "sandbox" and may be omitted when the tenant has one
    active credential. ``force_refresh`` skips the cache and requests a new token.
    """
    return current_token(tenant, environment, force_refresh=force_refresh)[1]


def invalidate_token(tenant: TenantRef | None = None, environment: str | None = None) -> None:
    """Drop the tenant's cached token; the next call requests a new one."""
    snapshot = credentials.resolve(tenant_or_current(tenant), environment)
    token_store.forget_token(snapshot)
    clear_memo()


# --- for the layers above: sessions, the admin, commands, receivers -----------------------


def credential_for(tenant: TenantRef, environment: str | None) -> CredentialSnapshot:
    """The tenant's credential snapshot (no token request): what ``get_session`` needs."""
    return credentials.cached_snapshot(tenant, environment) or credentials.resolve(
        tenant, environment
    )


def snapshot_of(credential: Any) -> CredentialSnapshot:
    """The snapshot of a ``ClientCredential`` row, for the admin and connectivity checks
    (never filed in the process's snapshots, so no generation is read: no cache access)."""
    return credentials.snapshot_of(credential, None)


def forget(snapshot: CredentialSnapshot) -> None:
    """Drop the credential's cached token and failure memory (admin "clear token")."""
    token_store.forget(snapshot)
    clear_memo()


def forget_if_current(snapshot: CredentialSnapshot, token: AccessToken) -> bool:
    """After a 401: drop ``token`` unless another caller has already replaced it."""
    forgotten = token_store.forget_if_current(snapshot, token)
    clear_memo()
    return forgotten


def may_refetch_after_401(snapshot: CredentialSnapshot, rejected: AccessToken) -> bool:
    """After a 401 on ``rejected``: may a new token be fetched? (UNAUTHORIZED_REFETCH_PAUSE)"""
    return token_store.may_refetch_after_401(snapshot, rejected)


def replacement_accepted(snapshot: CredentialSnapshot) -> None:
    """The token that replaced a rejected one worked: end any 401 pause."""
    token_store.clear_unauthorized(snapshot)


def replacement_rejected(snapshot: CredentialSnapshot, token: AccessToken) -> None:
    """The token that replaced a rejected one was refused too: pause refetching."""
    token_store.pause_refetch(snapshot, token)


def fetch_for_check(credential: Any, *, use_cache: bool) -> tuple[CredentialSnapshot, AccessToken]:
    """A token for a connectivity check: a fresh one (no remembered failure) unless
    ``use_cache``. Raises the typed token errors."""
    snapshot = snapshot_of(credential)
    if not use_cache:
        forget(snapshot)
    return snapshot, token_store.get(snapshot)


def cached_states(snapshots: list[CredentialSnapshot]) -> dict[Any, CachedState]:
    """Token, failure and usage state of many credentials in one cache read (the admin
    list, ``getpaid_check``, ``getpaid_refresh``)."""
    return token_store.cached_states(snapshots)


def refresh_if_due(snapshot: CredentialSnapshot, *, due_within: float) -> AccessToken | None:
    """Renew the credential's token if it expires within ``due_within`` seconds or none is
    cached (single flight: never twice for one credential); None when not due. Raises
    the typed token errors."""
    token = token_store.refresh_if_due(snapshot, due_within)
    if token is not None:
        clear_memo()
    return token


identities_of = credentials.identities_of


def credential_changed(identities: list[CredentialSnapshot]) -> None:
    """A credential change is committed: every process reloads, its old tokens go.

    ``identities`` (from ``identities_of`` at save time) name every cache key its tokens
    may be under. The deletions must reach the shared cache even while it is down.
    """
    credentials.bump_generation()
    clear_memo()
    for snapshot in identities:
        token_store.forget(snapshot, everywhere=True)


def tenant_key_changed() -> None:
    """A tenant key changed hands (committed): every process reloads its snapshots."""
    credentials.bump_generation()
    clear_memo()


def wait_for_background_refreshes(timeout: float = 10.0) -> None:
    """Block until this process's background refreshes finish (graceful shutdown, tests)."""
    token_store.wait_for_background_refreshes(timeout)


def reset() -> None:
    """Forget all process-local state: memo, snapshots, decrypted tokens, fallback cache.

    For tests (and a forked worker that must not share its parent's memory); waits for
    running background refreshes first so none lands after the reset.
    """
    token_store.wait_for_background_refreshes()
    clear_memo()
    credentials.clear_local_snapshots()
    token_store.clear_decrypted()
    cache_backend.clear_fallback()
    usage.forget_used_writes()
    telemetry.reset()
