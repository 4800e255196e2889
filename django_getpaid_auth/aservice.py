"""The service layer for coroutines: ``aget_token`` and ``ainvalidate_token``.

Same contract, errors and failure memory as ``service.get_token``/``invalidate_token``,
and the same state: the process memo, the shared cache entries, the cache lease and the
background refresh are the sync path's, so a sync and an async caller of one credential
share one token and never fetch twice.

Nothing here blocks the event loop:

* warm path: the process memo, read in the loop (no SQL, no cache round trip, no thread);
* when the memo has expired, one re-read per credential and loop, whatever the number of
  coroutines that need the token meanwhile;
* cache I/O: worker threads (``sync_to_async(thread_sensitive=False)``);
* the credential lookup (the ORM): ``sync_to_async(thread_sensitive=True)``, as Django's
  own async ORM calls do, so connections are handled by Django's rules;
* the token request: httpx's async transport (``atoken_client``).

httpx is an optional extra; without it these functions raise
``GetpaidAuthConfigurationError`` naming the extra, and the sync API is unaffected.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Any

from asgiref.sync import sync_to_async

from . import credentials, service, telemetry, token_store, usage
from .credentials import CredentialSnapshot, TenantRef
from .exceptions import GetpaidAuthConfigurationError
from .tokens import AccessToken

__all__ = [
    "HTTPX_EXTRA",
    "acurrent_token",
    "aforget_if_current",
    "aget_token",
    "ainvalidate_token",
    "amay_refetch_after_401",
    "areplacement_accepted",
    "areplacement_rejected",
    "credential_for",
    "require_httpx",
]

try:  # imported with this module, not on the event loop at the first cold call
    from . import atoken_client as atoken_client
except ImportError as exc:  # the httpx extra is not installed: require_httpx() says so
    if exc.name != "httpx":
        raise

HTTPX_EXTRA = 'pip install "django-getpaid-auth[httpx]"'
_httpx_checked: list[bool] = []


def require_httpx() -> None:
    """Raise ``GetpaidAuthConfigurationError`` naming the extra when httpx is missing."""
    if _httpx_checked:
        return
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise GetpaidAuthConfigurationError(
            f"The async API (aget_token, aget_session, GetpaidAuth) needs httpx: {HTTPX_EXTRA}."
        ) from None
    _httpx_checked.append(True)


async def acurrent_token(
    tenant: TenantRef | None, environment: str | None, *, force_refresh: bool = False
) -> tuple[CredentialSnapshot, AccessToken]:
    """``service.current_token`` for coroutines: the same memo, cache entries and flights."""
    require_httpx()
    tenant = service.tenant_or_current(tenant)
    key = credentials.lookup_key(tenant, environment)
    if not force_refresh:
        memo = service.memo_hit(key)
        if memo is not None:  # the warm path: never leaves the loop
            _note_used(memo[0])
            if telemetry.ENABLED:
                telemetry.memo_served(memo[0].pk, memo[0].environment)
            return memo
    if telemetry.ENABLED:
        with telemetry.token_span() as span:
            result = await _aread_or_join(tenant, environment, key, force_refresh)
            span.describe(result[0].pk, result[0].environment)
    else:
        result = await _aread_or_join(tenant, environment, key, force_refresh)
    _note_used(result[0])
    return result


async def _aread_or_join(
    tenant: TenantRef, environment: str | None, key: Any, force_refresh: bool
) -> tuple[CredentialSnapshot, AccessToken]:
    if force_refresh:
        return await _aread_through(tenant, environment, key, True)
    return await _ajoin_reread(tenant, environment, key)


def _note_used(snapshot: CredentialSnapshot) -> None:
    """Record the use (at most once a minute per process) in a worker thread, without
    waiting for it: the call that happens to be due is not slowed down."""
    if usage.used_write_due(snapshot):
        try:
            asyncio.get_running_loop().run_in_executor(None, usage.write_used, snapshot)
        except RuntimeError:  # the loop's executor is shut down (the loop is closing)
            usage.used_write_failed(snapshot)


# event loop -> {lookup key: the task re-reading that credential's token}
_rereads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Task[Any]]] = (
    weakref.WeakKeyDictionary()
)


async def _ajoin_reread(
    tenant: TenantRef, environment: str | None, key: Any
) -> tuple[CredentialSnapshot, AccessToken]:
    """Wait for this loop's re-read of ``key``, or start it: when the memo expires, the
    coroutines that need the token before the first re-read is back share it instead of
    each paying two thread offloads and a cache round trip (100 busy coroutines made 37
    re-reads in 5 s, benchmarks/RESULTS.md section 6). The re-read is a task of its own,
    so a waiter that is cancelled never cancels it for the others."""
    loop = asyncio.get_running_loop()
    tasks = _rereads.get(loop)
    if tasks is None:
        tasks = _rereads[loop] = {}
    task = tasks.get(key)
    if task is None:
        task = tasks[key] = loop.create_task(_aread_through(tenant, environment, key, False))
        task.add_done_callback(functools.partial(_reread_done, tasks, key))
    else:
        telemetry.set_outcome("waited")  # for another coroutine's re-read (or its fetch)
    result: tuple[CredentialSnapshot, AccessToken] = await asyncio.shield(task)
    return result


def _reread_done(tasks: dict[Any, asyncio.Task[Any]], key: Any, task: asyncio.Task[Any]) -> None:
    if tasks.get(key) is task:
        del tasks[key]
    if not task.cancelled():
        task.exception()  # retrieved: its waiters got it (or all of them left)


async def _aread_through(
    tenant: TenantRef, environment: str | None, key: Any, force_refresh: bool
) -> tuple[CredentialSnapshot, AccessToken]:
    """The cache (and, if the credential changed, the database) and then the token store:
    ``service.current_token`` below the memo, with every blocking call off the loop."""
    snapshot, cached = await token_store.offload(service.read_cached, tenant, environment)
    if snapshot is None:
        snapshot = await sync_to_async(service.resolve, thread_sensitive=True)(
            tenant, environment, cached
        )
        cached = token_store.UNSET
    token = None
    if not force_refresh:
        token = await token_store.offload(service.peek, snapshot, cached)
    if token is None:
        token = await token_store.aobtain(snapshot, force=force_refresh)
    service.remember(key, snapshot, token)
    return snapshot, token


async def aget_token(
    tenant: TenantRef | None = None, environment: str | None = None, *, force_refresh: bool = False
) -> AccessToken:
    """A valid access token for the tenant's credential; ``await`` it in async code.

    The same arguments, errors and failure memory as ``get_token``, and the same token:
    sync and async callers share the cache entry, lease and background refresh. Warm
    calls neither run SQL nor leave the event loop; 500 concurrent coroutines on a cold
    cache make one token request. A caller cancelled while waiting does not cancel the
    request the others wait for.
    """
    return (await acurrent_token(tenant, environment, force_refresh=force_refresh))[1]


async def ainvalidate_token(
    tenant: TenantRef | None = None, environment: str | None = None
) -> None:
    """Drop the tenant's cached token; the next call requests a new one (``invalidate_token``)."""
    require_httpx()
    tenant = service.tenant_or_current(tenant)
    await sync_to_async(service.invalidate_token, thread_sensitive=True)(tenant, environment)


async def credential_for(tenant: TenantRef, environment: str | None) -> CredentialSnapshot:
    """The tenant's credential snapshot (no token request): what ``aget_session`` needs."""
    snapshot = credentials.cached_snapshot(tenant, environment)  # no I/O
    if snapshot is not None:
        return snapshot
    return await sync_to_async(service.credential_for, thread_sensitive=True)(tenant, environment)


async def aforget_if_current(snapshot: CredentialSnapshot, token: AccessToken) -> bool:
    """``service.forget_if_current`` (after a 401) with its cache I/O off the loop."""
    return await token_store.offload(service.forget_if_current, snapshot, token)


async def amay_refetch_after_401(snapshot: CredentialSnapshot, rejected: AccessToken) -> bool:
    """``service.may_refetch_after_401`` with its cache I/O off the loop."""
    return await token_store.offload(service.may_refetch_after_401, snapshot, rejected)


async def areplacement_accepted(snapshot: CredentialSnapshot) -> None:
    await token_store.offload(service.replacement_accepted, snapshot)


async def areplacement_rejected(snapshot: CredentialSnapshot, token: AccessToken) -> None:
    await token_store.offload(service.replacement_rejected, snapshot, token)
