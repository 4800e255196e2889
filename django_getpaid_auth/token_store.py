"""credential -> token: the token cache and its single flight.

* Tokens live in the shared cache, encrypted, under a key derived from the credential's
  identity and version; the cache timeout is the token's lifetime less the clock skew.
* Fresh token: served. In its refresh window (``refresh_margin`` before expiry): one
  caller refreshes it, the others keep using it without waiting; if the refresh fails, the
  old token is served until it really expires.
* No usable token: exactly one request is made. Threads of one process share one
  in-flight fetch; processes share a short lease taken with ``cache.add`` (it expires if
  its holder dies) and the others poll the cache until the token appears.
* After a 429 or a credentials/configuration error the failure is remembered in the cache,
  and callers fail fast with the same error until the wait is over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.dispatch import Signal
from django.views.decorators.debug import sensitive_variables

from . import cache_backend, clock, crypto, telemetry, usage
from .conf import getpaid_settings, on_settings_reset
from .credentials import CredentialSnapshot
from .exceptions import (
    RateLimitedError,
    TokenRequestError,
    TokenWaitTimeoutError,
)
from .quota import QuotaReport
from .signals import token_obtained, token_request_failed
from .tokens import AccessToken
from .usage import Usage

logger = logging.getLogger("django_getpaid_auth.token_store")

POLL_INTERVAL = 0.02
POLL_INTERVAL_MAX = 0.2
REFRESH_FAILURE_PAUSE = 5.0  # after a failed background refresh, others wait this long
MAX_FAILURE_MEMORY = 24 * 3600.0  # no remembered failure (or Retry-After) lasts longer
DEFAULT_RATE_LIMIT_WAIT = 60.0  # a 429 that says nothing of when to come back
MAX_CIPHERTEXT = 64 * 1024

# --- keys ----------------------------------------------------------------------------


def token_key(snapshot: CredentialSnapshot) -> str:
    return snapshot.cache_key("token")


def lease_key(snapshot: CredentialSnapshot) -> str:
    return snapshot.cache_key("lease")


def failure_key(snapshot: CredentialSnapshot) -> str:
    return snapshot.cache_key("failure")


def refresh_pause_key(snapshot: CredentialSnapshot) -> str:
    return snapshot.cache_key("refresh-pause")


# --- cache entries -------------------------------------------------------------------
# An entry is a dict: {"ct": Fernet ciphertext of the token payload, "exp": epoch,
# "refresh": epoch, "until": epoch}. Expiry data stays readable so staleness needs no
# decryption. The encrypted payload names the cache key it was written under, so an entry
# copied under another credential's key is refused. Anything else found under our keys
# (wrong types, non-numbers, absurd times) is treated as absent, never as an error.

# Decrypted tokens by a 16-byte digest of their cache key and ciphertext (not the ~1 KiB
# ciphertext itself): the cache hands back the same ciphertext until the token changes.
_decrypted: OrderedDict[bytes, AccessToken] = OrderedDict()
_decrypted_lock = threading.Lock()
MAX_DECRYPTED = 20_000


def _digest(key: str, ciphertext: str) -> bytes:
    data = f"{key}\x00{ciphertext}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


@on_settings_reset
def clear_decrypted() -> None:
    with _decrypted_lock:
        _decrypted.clear()


def refresh_time(token: AccessToken) -> float:
    """When the token enters its refresh window (epoch seconds)."""
    expires = token.expires_at.timestamp()
    lifetime = max(1.0, token.lifetime)
    margin = getpaid_settings.refresh_margin(lifetime)
    skew = getpaid_settings.clock_skew(lifetime)
    return max(token.obtained_at.timestamp(), expires - margin - skew)


def make_entry(snapshot: CredentialSnapshot, token: AccessToken) -> dict[str, Any]:
    expires = token.expires_at.timestamp()
    skew = getpaid_settings.clock_skew(max(1.0, token.lifetime))
    key = token_key(snapshot)
    ciphertext = crypto.encrypt(json.dumps({**token.to_payload(), "key": key}))
    with _decrypted_lock:
        _decrypted[_digest(key, ciphertext)] = token
    return {
        "ct": ciphertext,
        "exp": expires,
        "refresh": refresh_time(token),
        "until": expires - skew,
    }


@sensitive_variables("payload", "token")
def token_of(snapshot: CredentialSnapshot, entry: Any) -> AccessToken | None:
    """The token in ``entry`` (read under ``snapshot``'s key), or None if it is not one."""
    if not is_entry(entry):
        return None
    ciphertext = entry["ct"]
    key = token_key(snapshot)
    digest = _digest(key, ciphertext)
    token = _decrypted.get(digest)
    if token is not None:
        return token if _times_match(entry, token) else None
    try:
        payload = json.loads(crypto.decrypt(ciphertext))
        if not isinstance(payload, dict) or payload.get("key") != key:
            logger.warning(
                "Ignoring a cached getpaid token written under another cache key "
                "(tenant=%s environment=%s).",
                snapshot.tenant_label,
                snapshot.environment,
            )
            return None
        token = _token_from_payload(payload)
    except Exception:  # wrong key, tampered, malformed: never an error, just absent
        logger.warning("Ignoring a cached token that cannot be decrypted (keys changed?).")
        return None
    if token is None:
        logger.warning("Ignoring a cached getpaid token with a malformed payload.")
        return None
    with _decrypted_lock:
        _decrypted[digest] = token
        while len(_decrypted) > MAX_DECRYPTED:
            _decrypted.popitem(last=False)
    return token if _times_match(entry, token) else None


def _times_match(entry: dict[str, Any], token: AccessToken) -> bool:
    """The readable times agree with the encrypted token: whoever can write to the cache
    can make a token look older (a refetch), never younger than it is."""
    expires = token.expires_at.timestamp()
    if (
        float(entry["exp"]) == expires
        and float(entry["refresh"]) <= float(entry["until"]) <= expires
    ):
        return True
    logger.warning("Ignoring a cached getpaid token whose readable expiry was altered.")
    return False


@sensitive_variables("payload", "value")
def _token_from_payload(payload: dict[str, Any]) -> AccessToken | None:
    value, token_type, scopes = (
        payload.get("value"),
        payload.get("token_type"),
        payload.get("scopes"),
    )
    expires, obtained = (
        clock.plausible_epoch(payload.get("expires_at")),
        clock.plausible_epoch(payload.get("obtained_at")),
    )
    if (
        not isinstance(value, str)
        or not value
        or not isinstance(token_type, str)
        or not isinstance(scopes, list)
        or not all(isinstance(scope, str) for scope in scopes)
        or expires is None
        or obtained is None
    ):
        return None
    return AccessToken.from_payload(payload)


def usable_until(entry: dict[str, Any]) -> float:
    """After this moment the token is never handed out (it could expire in flight)."""
    return float(entry["until"])


def is_entry(value: Any) -> bool:
    """A well-formed token entry: the right keys, plausible times, ASCII ciphertext."""
    if not isinstance(value, dict):
        return False
    ciphertext = value.get("ct")
    return (
        isinstance(ciphertext, str)
        and 0 < len(ciphertext) <= MAX_CIPHERTEXT
        and ciphertext.isascii()
        and all(
            clock.plausible_epoch(value.get(name)) is not None
            for name in ("exp", "refresh", "until")
        )
    )


def store(snapshot: CredentialSnapshot, token: AccessToken) -> dict[str, Any]:
    entry = make_entry(snapshot, token)
    timeout = max(1.0, usable_until(entry) - clock.now())
    cache_backend.set(token_key(snapshot), entry, timeout=timeout)
    return entry


# --- public operations -----------------------------------------------------------------


UNSET: Any = object()


def get(
    snapshot: CredentialSnapshot, *, force_refresh: bool = False, cached: Any = UNSET
) -> AccessToken:
    """A usable token for ``snapshot``. ``cached`` is the cache value if already read."""
    if force_refresh:
        return _obtain(snapshot, force=True)
    return peek(snapshot, cached=cached) or _obtain(snapshot)


def refresh_if_due(snapshot: CredentialSnapshot, due_within: float) -> AccessToken | None:
    """A new token when the cached one expires within ``due_within`` seconds (or none is
    cached), through the normal single flight and lease; None when not due.

    A peer that renews it first (another ``getpaid_refresh``, a worker) is not repeated:
    the forced flight accepts any token other than the one it set out to replace.
    """
    entry = cache_backend.get(token_key(snapshot))
    current = token_of(snapshot, entry) if is_entry(entry) else None
    if current is None or clock.now() >= usable_until(entry):
        return _obtain(snapshot)
    # Never renew a token in the first half of its life, however wide the window: a
    # window as long as the lifetime would otherwise renew every token on every run.
    window = min(due_within, current.lifetime / 2)
    if clock.now() + window < float(entry["exp"]):
        return None
    return _obtain(snapshot, force=True)


def peek(snapshot: CredentialSnapshot, *, cached: Any = UNSET) -> AccessToken | None:
    """The cached token if it may be handed out, else None (then a fetch is needed).

    In its refresh window the token is returned and a background refresh may start: the
    same for sync and async callers, so both share one refresh.
    """
    entry = cached if cached is not UNSET else cache_backend.get(token_key(snapshot))
    now = clock.now()
    if is_entry(entry) and now < usable_until(entry):
        token = token_of(snapshot, entry)
        if token is not None:
            if now >= float(entry["refresh"]):
                return _refresh_or_keep(snapshot, token)
            return token
    return None


def forget(snapshot: CredentialSnapshot, *, everywhere: bool = False) -> None:
    """Drop the cached token and the failure memory of ``snapshot``.

    ``everywhere``: the deletion must reach the shared cache even if it is down right now
    (a changed credential): it is then queued and replayed, never dropped.
    """
    keys = [
        token_key(snapshot),
        failure_key(snapshot),
        refresh_pause_key(snapshot),
        snapshot.cache_key("unauthorized"),  # the session's 401 pause: a save starts afresh
    ]
    if everywhere:
        cache_backend.write_shared("delete_many", keys)
    else:
        cache_backend.delete_many(keys)


def forget_token(snapshot: CredentialSnapshot) -> None:
    """Drop the cached token only (``invalidate_token``): the next call fetches a new one."""
    cache_backend.delete(token_key(snapshot))


def forget_if_current(snapshot: CredentialSnapshot, token: AccessToken) -> bool:
    """Drop the cached token only if it is still ``token`` (another caller may have renewed)."""
    entry = cache_backend.get(token_key(snapshot))
    if is_entry(entry):
        current = token_of(snapshot, entry)
        if current is not None and current.value != token.value:
            return False
    cache_backend.delete(token_key(snapshot))
    return True


def cached_entries(snapshots: list[CredentialSnapshot]) -> dict[int, dict[str, Any]]:
    """Cache entries (expiry only, no token) for many credentials in one ``get_many``."""
    keys = {token_key(s): s.pk for s in snapshots}
    found = cache_backend.get_many(keys)
    return {
        keys[k]: {"exp": v["exp"], "refresh": v["refresh"], "until": v["until"]}
        for k, v in found.items()
        if is_entry(v)
    }


@dataclass(frozen=True)
class CachedState:
    """What the cache holds for one credential, validated, without the token itself."""

    expires_at: float | None = None  # epoch seconds; None: no well-formed token entry
    refresh_at: float | None = None
    usable_until: float | None = None
    failure: TokenRequestError | None = None  # remembered failure still in its window
    usage: Usage = field(default_factory=Usage)  # quota figures, requests this hour, last use


def cached_states(snapshots: list[CredentialSnapshot]) -> dict[Any, CachedState]:
    """Token, failure and usage state of many credentials in ONE ``get_many`` (the admin
    list, ``getpaid_check``, ``getpaid_refresh``).

    Garbage under the keys reads as "nothing cached", never as an error.
    """
    keys: dict[str, tuple[Any, str]] = {}
    usage_keys: dict[Any, dict[str, str]] = {}
    now = time.time()
    for snapshot in snapshots:
        keys[token_key(snapshot)] = (snapshot.pk, "token")
        keys[failure_key(snapshot)] = (snapshot.pk, "failure")
        usage_keys[snapshot.pk] = usage.keys_of(snapshot, now)
    every_key = list(keys) + [k for ks in usage_keys.values() for k in ks.values()]
    found = cache_backend.get_many(every_key) if every_key else {}
    states: dict[Any, CachedState] = {
        s.pk: CachedState(usage=usage.from_values(usage_keys[s.pk], found)) for s in snapshots
    }
    found = {k: v for k, v in found.items() if k in keys}
    for key, value in found.items():
        pk, kind = keys[key]
        current = states[pk]
        if kind == "token" and is_entry(value):
            states[pk] = replace(
                current,
                expires_at=float(value["exp"]),
                refresh_at=float(value["refresh"]),
                usable_until=float(value["until"]),
            )
        elif kind == "failure":
            remembered = failure_from_cache(value)
            if remembered is not None:
                states[pk] = replace(current, failure=remembered[1])
    return states


# --- the API refused fresh tokens (401): pause refetching, shared by all processes ---------

# Clock tolerance when comparing a token's obtained_at (a datetime: microseconds) with the
# recorded rejection time.
_SAME_MOMENT = 0.001


def _unauthorized_key(snapshot: CredentialSnapshot) -> str:
    return snapshot.cache_key("unauthorized")


def _pause_seconds() -> float:
    return getpaid_settings.typed.unauthorized_refetch_pause


def may_refetch_after_401(snapshot: CredentialSnapshot, rejected: AccessToken) -> bool:
    """After a 401 on ``rejected``: may a new token be fetched? Records the rejection."""
    pause = _pause_seconds()
    if pause <= 0:
        return True
    now = clock.now()
    state = _unauthorized_state(cache_backend.get(_unauthorized_key(snapshot)), now, pause)
    if state is not None:
        rejected_at, fingerprint, paused_until = state
        if paused_until > now:
            return False
        if (
            now - rejected_at < pause
            and rejected.fingerprint != fingerprint
            and rejected.obtained_at.timestamp() >= rejected_at - _SAME_MOMENT
        ):
            pause_refetch(snapshot, rejected)  # a replacement was refused as well
            return False
    cache_backend.set(
        _unauthorized_key(snapshot),
        {"rejected_at": now, "fingerprint": rejected.fingerprint, "paused_until": 0.0},
        timeout=math.ceil(pause) + 1,
    )
    return True


def _unauthorized_state(value: Any, now: float, pause: float) -> tuple[float, str, float] | None:
    """(rejected_at, fingerprint, paused_until) from the cache, or None if malformed.

    Whoever can write to the cache must not crash callers, nor pause longer than the
    setting allows: times outside [now - pause, now + pause] read as absent.
    """
    if not isinstance(value, dict):
        return None
    # 0 is allowed for paused_until: "not paused".
    rejected_at = clock.number_within(value.get("rejected_at"), 0.0, _MAX_PAUSE_TIME)
    paused_until = clock.number_within(value.get("paused_until"), 0.0, _MAX_PAUSE_TIME)
    fingerprint = value.get("fingerprint")
    if not isinstance(fingerprint, str) or rejected_at is None or paused_until is None:
        return None
    if not (now - pause <= rejected_at <= now + 1) or paused_until > now + pause:
        return None
    return rejected_at, fingerprint, paused_until


_MAX_PAUSE_TIME = 1e11 - 1  # epoch seconds below 1e11, as the 401 pause has always taken


def clear_unauthorized(snapshot: CredentialSnapshot) -> None:
    """The retry's token was accepted: the credential works, forget the rejection."""
    if _pause_seconds() > 0:
        cache_backend.delete(_unauthorized_key(snapshot))


def pause_refetch(snapshot: CredentialSnapshot, rejected: AccessToken) -> None:
    pause = _pause_seconds()
    if pause <= 0:
        return
    now = clock.now()
    cache_backend.set(
        _unauthorized_key(snapshot),
        {"rejected_at": now, "fingerprint": rejected.fingerprint, "paused_until": now + pause},
        timeout=math.ceil(pause) + 1,
    )
    logger.warning(
        "The getpaid API refused a freshly obtained token (401) for tenant=%s environment=%s "
        "(fingerprint=%s); 401s are returned without fetching a new token for %gs "
        '(GETPAID_AUTH["UNAUTHORIZED_REFETCH_PAUSE"]). Check the credential\'s API access.',
        snapshot.tenant_label,
        snapshot.environment,
        rejected.fingerprint,
        pause,
    )


# --- failure memory --------------------------------------------------------------------


_FAILURE_FIELDS = {
    "message": str, "tenant": str, "environment": str, "error": str,
    "error_description": str, "trace_id": str, "hint": str, "quota": str,
}  # fmt: skip


def failure_from_cache(data: Any) -> tuple[float, TokenRequestError] | None:
    """A failure memory entry as (until, error), or None if it is malformed or expired.

    Every field is type-checked: a value planted under our key must not turn into an
    untyped exception for callers (or a 500 in the admin).
    """
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    until = clock.plausible_epoch(data.get("until"))
    now = clock.now()
    if until is None or until <= now:
        return None
    raw = data["error"]
    fields: dict[str, Any] = {}
    for name, kind in _FAILURE_FIELDS.items():
        value = raw.get(name, "")
        if not isinstance(value, kind):
            return None
        fields[name] = value[:1000]
    status = raw.get("status")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ):
        return None
    error_class = raw.get("class")
    if not isinstance(error_class, str):
        return None
    fields.update({"class": error_class, "status": status, "retry_after": None})
    if error_class != "RateLimitedError":
        fields.pop("quota")
    try:
        error = TokenRequestError.from_dict(fields)
    except Exception:  # a class that does not take these fields: not ours
        return None
    until = min(until, now + MAX_FAILURE_MEMORY)
    if isinstance(error, RateLimitedError):
        error.retry_after = max(0.0, until - now)
    return until, error


def remembered_failure(snapshot: CredentialSnapshot) -> TokenRequestError | None:
    found = failure_from_cache(cache_backend.get(failure_key(snapshot)))
    return found[1] if found else None


def _remember(snapshot: CredentialSnapshot, error: TokenRequestError) -> None:
    if isinstance(error, RateLimitedError):
        wait = error.retry_after if error.retry_after is not None else DEFAULT_RATE_LIMIT_WAIT
        if not isinstance(wait, (int, float)) or not math.isfinite(wait):
            wait = DEFAULT_RATE_LIMIT_WAIT
    elif error.retryable:
        return  # 5xx/timeouts: retried, not remembered
    else:
        wait = getpaid_settings.typed.config_error_backoff
    wait = min(float(wait), MAX_FAILURE_MEMORY)
    if wait <= 0:
        return
    cache_backend.set(
        failure_key(snapshot),
        {"until": clock.now() + wait, "error": error.to_dict()},
        timeout=wait + 1,
    )


# --- fetching: one at a time -------------------------------------------------------------

_flights: dict[str, Future[AccessToken]] = {}
_flights_lock = threading.Lock()


# Getting a token is written once, as generators that do no I/O themselves: they yield a
# step (below) and are sent its result, or thrown its exception. ``_run`` does the steps in
# the calling thread; ``_arun`` on an event loop.


class _Call:
    """Blocking work: cache I/O, signals. On an event loop it runs in a worker thread.

    ``shielded``: it must finish even if the task doing it is cancelled.
    """

    def __init__(self, function: Callable[..., Any], *args: Any, shielded: bool = False) -> None:
        self.function, self.args, self.shielded = function, args, shielded


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Request:
    """The token request; ``answers`` collects the quota reports of its attempts."""

    snapshot: CredentialSnapshot
    answers: list[QuotaReport | None]


_Step = _Call | _Sleep | _Request
_Steps = Generator[_Step, Any, AccessToken]


def _fetch_steps(snapshot: CredentialSnapshot) -> _Steps:
    """One token request, with usage counts, signals and failure memory."""
    telemetry.set_outcome("fetched")
    started = time.monotonic()
    answers: list[QuotaReport | None] = []
    try:
        token: AccessToken = yield _Request(snapshot, answers)
    except TokenRequestError as error:
        yield _Call(_failed, snapshot, error, started, answers)
        raise
    yield _Call(_obtained, snapshot, token, started, answers)
    return token


def _failed(
    snapshot: CredentialSnapshot,
    error: TokenRequestError,
    started: float,
    answers: list[QuotaReport | None],
) -> None:
    """A token request failed: count it, remember it (429, configuration errors), log,
    signal."""
    seen = _record_usage(snapshot, answers)
    _remember(snapshot, error)
    logger.warning("getpaid token request failed: %s", error)
    if telemetry.ENABLED:
        telemetry.failed(snapshot.environment, error)
    _announce(token_request_failed, snapshot, started, seen, error=error)


def _announce(
    signal: Signal, snapshot: CredentialSnapshot, started: float, seen: Usage, **details: Any
) -> None:
    """Send ``token_obtained`` or ``token_request_failed`` with the arguments both carry."""
    signal.send(
        sender=CredentialSnapshot,
        tenant=snapshot.tenant_label,
        environment=snapshot.environment,
        duration=time.monotonic() - started,
        credential_id=snapshot.pk,
        quota=seen.quota,
        token_requests_this_hour=seen.requests_this_hour,
        **details,
    )


def _record_usage(snapshot: CredentialSnapshot, answers: list[QuotaReport | None]) -> Usage:
    seen = usage.record_requests(snapshot, answers)
    if telemetry.ENABLED and seen.quota is not None:
        telemetry.quota_seen(snapshot.pk, snapshot.environment, seen.quota.buckets)
    return seen


def _obtained(
    snapshot: CredentialSnapshot,
    token: AccessToken,
    started: float,
    answers: list[QuotaReport | None],
) -> AccessToken:
    """A token request succeeded: share the token through the cache, count the request,
    log, signal."""
    store(snapshot, token)
    seen = _record_usage(snapshot, answers)
    logger.info(
        "getpaid token obtained for tenant=%s environment=%s expires_at=%s fingerprint=%s",
        snapshot.tenant_label,
        snapshot.environment,
        token.expires_at.isoformat(),
        token.fingerprint,
    )
    _announce(token_obtained, snapshot, started, seen, expires_at=token.expires_at)
    return token


def _release(snapshot: CredentialSnapshot, owner: str) -> None:
    if cache_backend.get(lease_key(snapshot)) == owner:
        cache_backend.delete(lease_key(snapshot))


def _acceptable(
    snapshot: CredentialSnapshot,
    entry: Any,
    *,
    before_refresh: bool,
    replaced: AccessToken | None = None,
) -> AccessToken | None:
    """The token in a cache ``entry`` if it may be handed out, else None.

    ``before_refresh``: only a token not yet due for refresh (a peer has just renewed it).
    ``replaced``: a forced refresh never settles for the token it is replacing.
    """
    if not is_entry(entry):
        return None
    limit = float(entry["refresh"]) if before_refresh else usable_until(entry)
    if clock.now() >= limit:
        return None
    token = token_of(snapshot, entry)
    if token is None or (replaced is not None and token.value == replaced.value):
        return None
    return token


def _refresh_or_keep(snapshot: CredentialSnapshot, current: AccessToken) -> AccessToken:
    """In the refresh window: the lease winner starts a refresh in the background; every
    caller, the winner included, keeps using ``current`` without waiting for it.

    A process runs at most one background refresh per credential and at most
    ``MAX_BACKGROUND_REFRESHES`` in all: a slow token endpoint or a thousand tokens due at
    once cannot pile up threads and sockets. Skipped refreshes are tried again by the next
    caller; the current token stays in use meanwhile.
    """
    if cache_backend.get(refresh_pause_key(snapshot)) or remembered_failure(snapshot):
        return current
    cache_id = snapshot.cache_id
    with _background_lock:
        if cache_id in _background_ids or len(_background) >= _max_background():
            return current
        _background_ids.add(cache_id)  # reserved before the lease: no second thread here
    owner = uuid.uuid4().hex
    if not cache_backend.add(lease_key(snapshot), owner, timeout=_lease_timeout()):
        with _background_lock:
            _background_ids.discard(cache_id)
        return current
    thread = threading.Thread(
        target=_refresh_in_background,
        args=(snapshot, current, owner),
        name=f"getpaid-token-refresh-{snapshot.pk}",
        daemon=True,
    )
    with _background_lock:
        _background.add(thread)
    thread.start()
    return current


_background: set[threading.Thread] = set()
_background_ids: set[str] = set()
_background_lock = threading.Lock()


def _max_background() -> int:
    return getpaid_settings.typed.max_background_refreshes


def running_background_refreshes() -> int:
    """Background refresh threads alive in this process (monitoring, tests)."""
    with _background_lock:
        return len(_background)


def _refresh_in_background(snapshot: CredentialSnapshot, current: AccessToken, owner: str) -> None:
    try:
        # A peer may have renewed it between our read and our lease: nothing to do then.
        if (
            _acceptable(snapshot, cache_backend.get(token_key(snapshot)), before_refresh=True)
            is None
        ):
            _run(_fetch_steps(snapshot))
    except TokenRequestError as error:
        logger.warning(
            "Refreshing the getpaid token failed; the current one (valid until %s) stays in "
            "use: %s",
            current.expires_at.isoformat(),
            error,
        )
        cache_backend.set(refresh_pause_key(snapshot), True, timeout=REFRESH_FAILURE_PAUSE)
    except Exception:  # never let a refresh thread die silently
        logger.exception("Unexpected error while refreshing a getpaid token")
    finally:
        _release(snapshot, owner)
        with _background_lock:
            _background.discard(threading.current_thread())
            _background_ids.discard(snapshot.cache_id)


def wait_for_background_refreshes(timeout: float = 10.0) -> None:
    """Block until running background refreshes finish (tests, graceful shutdown)."""
    deadline = time.monotonic() + timeout
    while True:
        with _background_lock:
            threads = list(_background)
        if not threads:
            return
        threads[0].join(max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            return


def _lease_timeout() -> float:
    return getpaid_settings.typed.lease_timeout


def _flight_key(snapshot: CredentialSnapshot, force: bool) -> str:
    return token_key(snapshot) + (":force" if force else "")


def _join_or_lead(key: str) -> tuple[Future[AccessToken], bool]:
    """The process's in-flight fetch for ``key`` and whether the caller leads it.

    One table for threads and event loops alike: a coroutine joins a fetch a thread is
    making and vice versa, so a process never makes two fetches for one credential.
    """
    with _flights_lock:
        flight = _flights.get(key)
        if flight is not None:
            return flight, False
        flight = _flights[key] = Future()
        return flight, True


def _end_flight(key: str) -> None:
    with _flights_lock:
        _flights.pop(key, None)


def _obtain(snapshot: CredentialSnapshot, *, force: bool = False) -> AccessToken:
    """No usable token: join this process's in-flight fetch, or lead one."""
    key = _flight_key(snapshot, force)
    flight, leader = _join_or_lead(key)
    if leader:
        return _run(_leading(snapshot, force, flight, key))
    telemetry.set_outcome("waited")
    try:
        return flight.result(timeout=getpaid_settings.typed.wait_timeout)
    except (TimeoutError, concurrent.futures.TimeoutError):  # distinct before 3.11
        raise TokenWaitTimeoutError(
            "Timed out waiting for another thread's token request.",
            tenant=snapshot.tenant_label,
            environment=snapshot.environment,
        ) from None


def _leading(
    snapshot: CredentialSnapshot, force: bool, flight: Future[AccessToken], key: str
) -> _Steps:
    """The leader's ``_lease_steps``; its token or error is handed to the flight's waiters."""
    try:
        token = yield from _lease_steps(snapshot, force)
    except BaseException as exc:
        flight.set_exception(exc)
        raise
    else:
        flight.set_result(token)
        return token
    finally:
        _end_flight(key)


def _lease_steps(snapshot: CredentialSnapshot, force: bool) -> _Steps:
    """A token shared across processes: a peer's, or one fetched under the lease.

    A remembered failure is raised, before the lease and after each lease taken by
    another; the lease holder re-reads the cache, then fetches. The others poll (the
    interval grows x1.5 up to POLL_INTERVAL_MAX) until a token appears, or fail after
    WAIT_TIMEOUT. ``force``: never settle for the token cached when the refresh began.
    """
    read_token = _Call(cache_backend.get, token_key(snapshot))
    read_failure = _Call(remembered_failure, snapshot)
    failure = yield read_failure
    if failure is not None:
        raise failure
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + getpaid_settings.typed.wait_timeout
    interval = POLL_INTERVAL
    entry = yield read_token
    replaced = token_of(snapshot, entry) if force else None
    if force and replaced is None:
        entry = None  # nothing cached to replace: only a token fetched from now on will do
    while True:
        token = _acceptable(snapshot, entry, before_refresh=False, replaced=replaced)
        if token is not None:
            return token
        if (yield _Call(cache_backend.add, lease_key(snapshot), owner, _lease_timeout())):
            try:
                # A peer may have finished between our read and our lease: use theirs.
                entry = yield read_token
                token = _acceptable(snapshot, entry, before_refresh=False, replaced=replaced)
                if token is not None:
                    return token
                return (yield from _fetch_steps(snapshot))
            finally:
                # shielded: even a task cancelled at loop shutdown leaves no lease behind
                yield _Call(_release, snapshot, owner, shielded=True)
        failure = yield read_failure
        if failure is not None:
            raise failure
        if time.monotonic() >= deadline:
            raise TokenWaitTimeoutError(
                "Timed out waiting for another process's token request "
                f"(lease held longer than WAIT_TIMEOUT={getpaid_settings.typed.wait_timeout:g}s).",
                tenant=snapshot.tenant_label,
                environment=snapshot.environment,
            )
        yield _Sleep(interval)
        telemetry.set_outcome("waited")  # a token that appears now is a peer's
        interval = min(POLL_INTERVAL_MAX, interval * 1.5)
        entry = yield read_token


def _run(steps: _Steps) -> AccessToken:
    """Do ``steps`` in the calling thread; their token."""
    try:
        step = next(steps)
        while True:
            try:
                if isinstance(step, _Call):
                    result = step.function(*step.args)
                elif isinstance(step, _Sleep):
                    time.sleep(step.seconds)
                    result = None
                else:
                    from .token_client import request_token

                    result = request_token(step.snapshot, step.answers)
            except BaseException as error:
                step = steps.throw(error)
            else:
                step = steps.send(result)
    except StopIteration as done:
        token: AccessToken = done.value
        return token


# --- the same, for coroutines ------------------------------------------------------------
# The steps above, done on an event loop: blocking work in worker threads (never on the
# loop), the token request with httpx's async client. Flights, the lease, failure memory and
# background refreshes are the ones above: a sync and an async caller of one credential never
# fetch twice.

_T = TypeVar("_T")
# Leader tasks, kept referenced until done: nothing else holds a task whose caller left.
_leader_tasks: set[asyncio.Task[AccessToken]] = set()


async def offload(function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` in a worker thread: cache I/O must not block the event loop.

    ``thread_sensitive=False``: the cache clients are thread-safe and no database
    connection is involved, so calls need not queue for Django's one sync thread.
    """
    return await sync_to_async(function, thread_sensitive=False)(*args)


async def aobtain(snapshot: CredentialSnapshot, *, force: bool = False) -> AccessToken:
    """``_obtain`` for coroutines: join this process's in-flight fetch, or lead one.

    The leader's work runs in its own task, so a caller cancelled while waiting (the
    leader included) never cancels the fetch the others wait for; the task releases the
    lease whatever happens. Waiting is bounded by WAIT_TIMEOUT, as for threads.
    """
    key = _flight_key(snapshot, force)
    flight, leader = _join_or_lead(key)
    if leader:
        task = asyncio.ensure_future(_arun(_leading(snapshot, force, flight, key)))
        _leader_tasks.add(task)
        task.add_done_callback(_leader_done)
    # shield: cancelling a caller must not cancel the shared concurrent future.
    wrapped = asyncio.wrap_future(flight)
    wrapped.add_done_callback(_retrieve)  # a caller that left does not read it
    waiting = asyncio.shield(wrapped)
    if leader:
        return await waiting
    telemetry.set_outcome("waited")
    try:
        return await asyncio.wait_for(waiting, getpaid_settings.typed.wait_timeout)
    except asyncio.TimeoutError:
        raise TokenWaitTimeoutError(
            "Timed out waiting for another caller's token request.",
            tenant=snapshot.tenant_label,
            environment=snapshot.environment,
        ) from None


def _retrieve(future: asyncio.Future[AccessToken]) -> None:
    if not future.cancelled():
        future.exception()


def _leader_done(task: asyncio.Task[AccessToken]) -> None:
    _leader_tasks.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the waiters got it through the flight


async def _arun(steps: _Steps) -> AccessToken:
    """``_run`` on an event loop: ``offload`` for blocking work, ``asyncio.sleep``."""
    try:
        step = next(steps)
        while True:
            try:
                if isinstance(step, _Call):
                    work = offload(step.function, *step.args)
                    result = await (asyncio.shield(work) if step.shielded else work)
                elif isinstance(step, _Sleep):
                    await asyncio.sleep(step.seconds)
                    result = None
                else:
                    from .atoken_client import arequest_token

                    result = await arequest_token(step.snapshot, step.answers)
            except BaseException as error:
                step = steps.throw(error)
            else:
                step = steps.send(result)
    except StopIteration as done:
        token: AccessToken = done.value
        return token
