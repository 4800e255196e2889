"""Connectivity checks shared by ``manage.py getpaid_check`` and the admin action.

A check fetches a token (fresh unless asked otherwise), compares granted with requested
scopes, optionally probes the API base URL with the token, and can record the outcome on
the credential (``last_checked_at``/``last_check_ok``/``last_check_error``) without
touching its secret or invalidating anything. :func:`add_usage` then adds what the shared
cache knows of each credential's Auth0 quota and token usage, in one cache read.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from . import clock, service
from .conf import getpaid_settings
from .exceptions import GetpaidAuthError
from .models import ClientCredential, mask
from .quota import QuotaBucket, QuotaReport
from .user_agent import USER_AGENT


@dataclass
class CheckResult:
    credential_id: int
    tenant: str
    environment: str
    client_id: str  # masked
    ok: bool = False
    latency_ms: float | None = None
    expires_at: datetime | None = None
    requested_scopes: list[str] = field(default_factory=list)
    granted_scopes: list[str] = field(default_factory=list)
    missing_scopes: list[str] = field(default_factory=list)
    api_status: int | None = None
    error: str = ""
    error_type: str = ""
    checked_at: datetime = field(default_factory=timezone.now)
    fingerprint: str = ""  # of the token the check obtained (12 hex digits, never the token)
    # From the shared cache after the check (add_usage); None: nothing known.
    quota: QuotaReport | None = None  # figures of the last token answer that carried any
    token_requests_this_hour: int | None = None  # all processes, current clock hour (UTC)
    last_used: float | None = None  # epoch seconds

    def current_buckets(self, now: float) -> tuple[QuotaBucket, ...]:
        """Quota buckets whose figures still hold (their window has not reset since)."""
        return self.quota.current_buckets(now) if self.quota else ()

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready (``getpaid_check --json``; every time ISO 8601 to the second,
        :func:`clock.iso`); ``now`` (epoch) decides which buckets are still current."""
        now = time.time() if now is None else now
        return {
            "credential_id": self.credential_id,
            "tenant": self.tenant,
            "environment": self.environment,
            "client_id": self.client_id,
            "ok": self.ok,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "expires_at": clock.iso(self.expires_at.timestamp() if self.expires_at else None),
            "requested_scopes": self.requested_scopes,
            "granted_scopes": self.granted_scopes,
            "missing_scopes": self.missing_scopes,
            "api_status": self.api_status,
            "error": self.error or None,
            "error_type": self.error_type or None,
            "checked_at": clock.iso(self.checked_at.timestamp()),
            "quota": quota_as_dict(self.quota, now) if self.quota else None,
            "token_requests_this_hour": self.token_requests_this_hour,
            "last_used": clock.iso(self.last_used),
        }


def quota_as_dict(report: QuotaReport, now: float) -> dict[str, Any]:
    """A QuotaReport with ISO 8601 times, and per bucket whether it is low and current,
    so a monitoring script need not know the threshold or compare times itself."""
    rate_limit = report.rate_limit
    return {
        "seen_at": clock.iso(report.seen_at),
        "status": report.status,
        "buckets": [
            {
                "name": bucket.name,
                "limit": bucket.limit,
                "remaining": bucket.remaining,
                "resets_at": clock.iso(bucket.resets_at),
                "low": bucket.is_low,
                "current": bucket.resets_at > now,
            }
            for bucket in report.buckets
        ],
        "rate_limit": None
        if rate_limit is None
        else {
            "limit": rate_limit.limit,
            "remaining": rate_limit.remaining,
            "resets_at": clock.iso(rate_limit.resets_at),
        },
    }


def result_for(
    credential: ClientCredential, *, error: str = "", error_type: str = ""
) -> CheckResult:
    """A result describing ``credential`` (failed when ``error`` is given), no check run."""
    return CheckResult(
        credential_id=credential.pk,
        tenant=str(credential.tenant),
        environment=credential.environment,
        client_id=mask(credential.client_id),
        requested_scopes=credential.scope_list,
        error=error,
        error_type=error_type,
    )


@sensitive_variables()  # the token is a local here and in requests' frames below
def check_credential(
    credential: ClientCredential, *, use_cache: bool = False, probe_api: bool = False
) -> CheckResult:
    """Check one credential; never raises for a getpaid/configuration problem."""
    result = result_for(credential)
    started = time.monotonic()
    try:
        snapshot, token = service.fetch_for_check(credential, use_cache=use_cache)
    except GetpaidAuthError as exc:
        result.latency_ms = (time.monotonic() - started) * 1000
        result.error, result.error_type = str(exc), type(exc).__name__
        return result
    result.latency_ms = (time.monotonic() - started) * 1000
    result.expires_at = token.expires_at
    result.fingerprint = token.fingerprint
    result.granted_scopes = sorted(token.scopes)
    result.missing_scopes = [s for s in result.requested_scopes if s not in token.scopes]
    if result.missing_scopes:
        result.error = f"getpaid did not grant: {' '.join(result.missing_scopes)}"
        result.error_type = "MissingScopes"
        return result
    if probe_api:
        try:
            response = requests.get(
                snapshot.api_url + "/",
                headers={"Authorization": token.authorization, "User-Agent": USER_AGENT},
                timeout=getpaid_settings.typed.api_timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            result.error = f"API probe failed: {type(exc).__name__}"
            result.error_type = "ApiUnreachable"
            return result
        result.api_status = response.status_code
        if response.status_code in (401, 403) or response.status_code >= 500:
            trace = response.headers.get("Getpaid-Trace-Id", "")
            result.error = f"API probe answered {response.status_code}" + (
                f" (trace_id={trace})" if trace else ""
            )
            result.error_type = "ApiRejected"
            return result
    result.ok = True
    return result


def add_usage(results: Iterable[CheckResult], credentials: Iterable[ClientCredential]) -> None:
    """Fill each result's quota, token_requests_this_hour and last_used from the shared
    cache: ONE read for all of them, after the checks (so a check's own token answer
    counts). Unknown or garbled entries stay None; nothing here fails a check."""
    snapshots = []
    for credential in credentials:
        try:
            snapshots.append(service.snapshot_of(credential))
        except GetpaidAuthError:
            continue  # e.g. an environment that is not configured: its check already failed
    if not snapshots:
        return
    states = service.cached_states(snapshots)
    for result in results:
        state = states.get(result.credential_id)
        if state is not None:
            result.quota = state.usage.quota
            result.token_requests_this_hour = state.usage.requests_this_hour
            result.last_used = state.usage.last_used


def record_results(results: Iterable[CheckResult]) -> int:
    """Store outcomes on the credentials (no signals: tokens and snapshots stay valid)."""
    by_pk = {r.credential_id: r for r in results}
    rows = list(ClientCredential.objects.filter(pk__in=by_pk).only("pk", "granted_scopes"))
    for row in rows:
        result = by_pk[row.pk]
        row.last_checked_at = result.checked_at
        row.last_check_ok = result.ok
        row.last_check_error = result.error[:2000]
        if result.granted_scopes or result.ok:
            row.granted_scopes = " ".join(result.granted_scopes)
    fields = ["last_checked_at", "last_check_ok", "last_check_error", "granted_scopes"]
    ClientCredential.objects.bulk_update(rows, fields, batch_size=500)
    return len(rows)
