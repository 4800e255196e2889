"""Warm tokens ahead of need without spending quota on idle tenants.

``manage.py getpaid_refresh`` and the ``refresh_due_tokens`` task (Django 6.0+) both call
:func:`run`. Auth0 bills and limits machine-to-machine tokens per client, so a warmer must
not request tokens nobody will use: a credential is refreshed only when it was used
recently (``Usage.last_used``, recorded by ``get_token`` at most once a minute) *and* its
cached token expires soon or is missing. Everything is read with one cache ``get_many``;
each refresh goes through the service's single flight and cross-process lease, so two
warmers (or a warmer and a busy worker) never renew one credential twice.

This module calls only the service layer (import-linter enforces it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import clock, service
from .conf import getpaid_settings
from .exceptions import GetpaidAuthError, printable
from .models import ClientCredential, Environment, get_tenant_model, mask

logger = logging.getLogger("django_getpaid_auth.refresh")

#: Renew tokens expiring within 10 minutes: with the refresh run every 5 minutes (the
#: documented crontab), a used tenant's token is renewed at least once before it expires,
#: and before requests would have to wait for a new one.
DEFAULT_DUE_WITHIN = 600.0
#: A credential counts as in use when ``get_token``/``get_session`` ran for it in the last
#: hour; idle ones get no token until they are used again (then one is fetched on demand).
DEFAULT_USED_WITHIN = 3600.0

REFRESHED = "refreshed"  # a new token is cached now (fetched by this run or a peer's flight)
FRESH = "fresh"  # used recently, token not due: nothing to do
IDLE = "idle"  # not used recently (or never): skipped, no token request
FAILED = "failed"  # the refresh raised; error and error_type say why (scrubbed)
STATUSES = (REFRESHED, FRESH, IDLE, FAILED)


class SelectionError(ValueError):
    """A usage error: a bad option, an unknown tenant, a tenant without a credential."""


def seconds(name: str, value: Any) -> float:
    """``value`` as a non-negative, finite number of seconds, or SelectionError naming
    ``name`` (command options and task arguments are validated alike)."""
    if isinstance(value, bool):
        raise SelectionError(f"{name} must be a number of seconds, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SelectionError(f"{name} must be a number of seconds, not {value!r}.") from None
    if not math.isfinite(number) or number < 0:
        raise SelectionError(f"{name} must be a non-negative number of seconds, not {value!r}.")
    return number


@dataclass(frozen=True)
class RefreshResult:
    """What happened to one credential (never a secret or a token)."""

    credential_id: int
    tenant: str
    tenant_key: str
    environment: str
    client_id: str  # masked
    status: str  # one of STATUSES
    last_used: float | None = None  # epoch seconds, as recorded in the shared cache
    expires_at: float | None = None  # the cached token's expiry after the run, if known
    error: str | None = None
    error_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO 8601 to the second, :func:`clock.iso`), as
        ``getpaid_refresh --json`` prints it."""
        return {
            "credential_id": self.credential_id,
            "tenant": self.tenant,
            "tenant_key": self.tenant_key,
            "environment": self.environment,
            "client_id": self.client_id,
            "status": self.status,
            "last_used": clock.iso(self.last_used),
            "expires_at": clock.iso(self.expires_at),
            "error": self.error,
            "error_type": self.error_type,
        }


@dataclass(frozen=True)
class RefreshReport:
    """One run: every selected credential's result and the windows it used."""

    results: tuple[RefreshResult, ...]
    due_within: float
    used_within: float
    duration: float  # seconds

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        return self.count(FAILED) == 0

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document and the task's return value (JSON-serialisable)."""
        return {
            "ok": self.ok,
            "selected": len(self.results),
            **{status: self.count(status) for status in STATUSES},
            "due_within": self.due_within,
            "used_within": self.used_within,
            "duration_ms": round(self.duration * 1000, 1),
            "results": [r.as_dict() for r in self.results],
        }


def tenant_key(credential: ClientCredential) -> str:
    return str(getattr(credential.tenant, getpaid_settings.TENANT_KEY_FIELD))


def tenant_keys(tenants: Any) -> list[str]:
    """``tenants`` (a list or tuple of strings or integers: a task's JSON arguments may hold
    numbers) as strings, duplicates dropped; anything else is a SelectionError naming it."""
    if not isinstance(tenants, list | tuple):
        raise SelectionError(
            "tenants must be a list of tenant keys (tenant keys are strings or integers), "
            f"not {printable(repr(tenants))}."
        )
    for key in tenants:
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise SelectionError(
                f"tenant keys are strings or integers, not {printable(repr(key))}."
            )
    return list(dict.fromkeys(str(key) for key in tenants))


def select_credentials(
    tenants: Sequence[str | int] = (), environment: str | None = None
) -> list[ClientCredential]:
    """Active credentials (tenants loaded in the same query), sorted by tenant key,
    environment and id: the selection of ``getpaid_refresh``, the task and
    ``getpaid_check``.

    A bad tenant key or environment, a named tenant that is unknown or has no active
    credential is a SelectionError (its message shows keys through ``printable``); no
    active credential at all is not (a warmer on a fresh install has nothing to do; the
    caller decides).
    """
    if environment is not None and environment not in Environment.values:
        raise SelectionError(
            f"Unknown environment {printable(repr(environment))}; choose from "
            f"{', '.join(Environment.values)}."
        )
    keys = tenant_keys(tenants)
    key_field = getpaid_settings.TENANT_KEY_FIELD
    queryset = ClientCredential.objects.select_related("tenant").filter(is_active=True)
    if keys:
        queryset = queryset.filter(**{f"tenant__{key_field}__in": keys})
    if environment is not None:
        queryset = queryset.filter(environment=environment)
    selected = list(queryset)
    if keys:
        found = {tenant_key(c) for c in selected}
        missing = [key for key in keys if key not in found]
        if missing:
            tenant_model = get_tenant_model()
            existing = {
                str(value)
                for value in tenant_model._default_manager.filter(
                    **{f"{key_field}__in": missing}
                ).values_list(key_field, flat=True)
            }
            unknown = [key for key in missing if key not in existing]
            if unknown:
                raise SelectionError(
                    f"Unknown {tenant_model._meta.verbose_name} {key_field}: "
                    f"{', '.join(printable(k) for k in unknown)}."
                )
            where = f" for environment {environment}" if environment else ""
            raise SelectionError(
                f"No active getpaid credential{where} for: "
                f"{', '.join(printable(k) for k in missing)}."
            )
    selected.sort(key=lambda c: (tenant_key(c), c.environment, c.pk))
    return selected


def refresh_credentials(
    credentials: Iterable[ClientCredential], *, due_within: float, used_within: float
) -> RefreshReport:
    """Refresh the recently used credentials whose token is due; see the module docstring.

    Never raises for a getpaid problem: a failed refresh is a FAILED result.
    """
    started = time.monotonic()
    credentials = list(credentials)
    results: dict[int, RefreshResult] = {}
    snapshots: list[tuple[ClientCredential, service.CredentialSnapshot]] = []
    for credential in credentials:
        try:
            snapshots.append((credential, service.snapshot_of(credential)))
        except Exception as exc:  # e.g. an environment the settings no longer define
            _log_failure(str(credential.tenant), credential.environment, exc)
            results[credential.pk] = _result(credential, FAILED, error=exc)
    states = service.cached_states([snapshot for _, snapshot in snapshots])  # one get_many
    for credential, snapshot in snapshots:
        state = states.get(snapshot.pk) or service.CachedState()
        results[credential.pk] = _refresh_one(
            credential, snapshot, state, due_within=due_within, used_within=used_within
        )
    return RefreshReport(
        results=tuple(results[c.pk] for c in credentials),
        due_within=due_within,
        used_within=used_within,
        duration=time.monotonic() - started,
    )


def run(
    *,
    tenants: Sequence[str | int] = (),
    environment: str | None = None,
    due_within: Any = DEFAULT_DUE_WITHIN,
    used_within: Any = DEFAULT_USED_WITHIN,
) -> RefreshReport:
    """Validate, select and refresh: what the command and the task do."""
    due = seconds("due_within", due_within)
    used = seconds("used_within", used_within)
    return refresh_credentials(
        select_credentials(tenants, environment), due_within=due, used_within=used
    )


def _refresh_one(
    credential: ClientCredential,
    snapshot: service.CredentialSnapshot,
    state: service.CachedState,
    *,
    due_within: float,
    used_within: float,
) -> RefreshResult:
    last_used = state.usage.last_used
    if last_used is None or time.time() - last_used > used_within:  # usage uses wall time
        return _result(credential, IDLE, last_used=last_used, expires_at=state.expires_at)
    now = clock.now()
    if (
        state.expires_at is not None
        and state.usable_until is not None
        and now < state.usable_until
        and now + due_within < state.expires_at
    ):
        return _result(credential, FRESH, last_used=last_used, expires_at=state.expires_at)
    try:
        token = service.refresh_if_due(snapshot, due_within=due_within)
    except Exception as exc:
        _log_failure(snapshot.tenant_label, snapshot.environment, exc)
        return _result(
            credential, FAILED, last_used=last_used, expires_at=state.expires_at, error=exc
        )
    if token is None:  # a peer renewed it since our read, or it is in its first half-life
        return _result(credential, FRESH, last_used=last_used, expires_at=state.expires_at)
    return _result(
        credential, REFRESHED, last_used=last_used, expires_at=token.expires_at.timestamp()
    )


def _log_failure(tenant: str, environment: str, exc: BaseException) -> None:
    """The one WARNING of a FAILED result (the scrubbed error, never a secret)."""
    logger.warning(
        "getpaid token refresh failed for tenant=%s environment=%s: %s",
        printable(tenant),
        printable(environment),
        _error_text(exc),
    )


def _error_text(exc: BaseException) -> str:
    """The package's errors are written to be shown (no secret, no token); anything else
    may hold anything, so only its class is named."""
    if isinstance(exc, GetpaidAuthError):
        return printable(exc)
    return f"Unexpected error during the refresh: {type(exc).__name__}"


def _result(
    credential: ClientCredential,
    status: str,
    *,
    last_used: float | None = None,
    expires_at: float | None = None,
    error: BaseException | None = None,
) -> RefreshResult:
    return RefreshResult(
        credential_id=credential.pk,
        tenant=str(credential.tenant),
        tenant_key=tenant_key(credential),
        environment=credential.environment,
        client_id=mask(credential.client_id),
        status=status,
        last_used=last_used,
        expires_at=expires_at,
        error=None if error is None else _error_text(error),
        error_type=None if error is None else type(error).__name__,
    )
