"""The payments page: what a tenant-aware view using django-getpaid-auth looks like.

The view never handles a secret or a token: it names the tenant, and the package finds
the credential, fetches (or reuses) the token and authenticates the request.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any
from uuid import uuid4

import requests
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from django_getpaid_auth import get_session, get_token
from django_getpaid_auth.exceptions import GetpaidAuthError

from .models import Membership

logger = logging.getLogger(__name__)

PAGE_SIZE = 20


def _format_amount(amount: Any, currency: Any) -> str:
    """getpaid amounts are integers in minor units (cents)."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        return f"{amount} {currency or ''}".strip()
    return f"{Decimal(amount).scaleb(-2):,.2f} {currency or ''}".strip()


def _rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten the query response items into what the table shows."""
    rows = []
    for item in items:
        method = item.get("method") or {}
        seller = item.get("seller") or {}
        rows.append(
            {
                "id": item.get("id", ""),
                "reference": item.get("reference", ""),
                "status": item.get("status", ""),
                "amount": _format_amount(item.get("amount"), item.get("currency")),
                "created_at": item.get("created_at", ""),
                "method": " ".join(
                    str(v) for v in (method.get("scheme"), method.get("display_hint")) if v
                ),
                "seller": seller.get("legal_name", ""),
            }
        )
    return rows


def _api_error(response: requests.Response) -> str:
    """A readable line from an RFC 7807 problem response, with the trace id for support."""
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    parts = [f"getpaid API answered HTTP {response.status_code}"]
    title, detail = problem.get("title"), problem.get("detail")
    if title or detail:
        parts.append(": " + " — ".join(str(p) for p in (title, detail) if p))
    trace_id = response.headers.get("Getpaid-Trace-Id")
    if trace_id:
        parts.append(f" (trace id {trace_id})")
    return "".join(parts)


@login_required
def payments(request: HttpRequest) -> HttpResponse:
    """List the signed-in user's tenant payments, and when its getpaid token expires."""
    context: dict[str, Any] = {"tenant": None, "token": None, "payments": [], "error": ""}
    try:
        tenant = request.user.membership.tenant  # type: ignore[union-attr]
    except Membership.DoesNotExist:
        context["error"] = (
            f"User {request.user.get_username()!r} belongs to no tenant. Add a Membership "
            "in the admin (Demo shop › Memberships), or sign in as a demo user."
        )
        return render(request, "shop/payments.html", context)
    context["tenant"] = tenant

    try:
        # Only the expiry, scopes and fingerprint reach the template, never the token
        # itself. The session below reuses this cached token (no second fetch).
        token = get_token(tenant)
        context["token"] = {
            "expires_at": token.expires_at,
            "scopes": sorted(token.scopes),
            "fingerprint": token.fingerprint,
        }
        session = get_session(tenant)
        context["environment"] = session.environment
        context["api_url"] = session.api_url
        response = session.post(
            "/v2/payments/query",
            json={
                "type": "payments",
                "first": PAGE_SIZE,
                "sorts": [{"field": "created_at", "direction": "descending"}],
            },
            headers={"Getpaid-Idempotency-Key": str(uuid4())},
        )
    except GetpaidAuthError as exc:
        # Configuration, credential and token errors: their text says what to fix and
        # never contains a secret or token.
        logger.warning("getpaid request for tenant %s failed: %s", tenant, exc)
        context["error"] = str(exc)
        return render(request, "shop/payments.html", context, status=502)
    except requests.RequestException as exc:
        logger.warning("getpaid API unreachable for tenant %s: %s", tenant, exc)
        context["error"] = f"The getpaid API could not be reached ({type(exc).__name__})."
        return render(request, "shop/payments.html", context, status=502)

    if not response.ok:
        context["error"] = _api_error(response)
        return render(request, "shop/payments.html", context, status=502)
    body = response.json()
    context["payments"] = _rows(body.get("data") or [])
    context["has_more"] = bool(body.get("cursor"))
    return render(request, "shop/payments.html", context)
