"""The payments page: what a tenant-aware view using django-getpaid-auth looks like.

The view never handles a secret or a token: it names the tenant, and the package finds
the credential, fetches (or reuses) the token and authenticates the request. Nor does
it handle idempotency keys, retries or problem documents: the client gives the POST
its ``Getpaid-Idempotency-Key``, retries what is safe to retry and, with
``raise_errors=True``, raises a typed ``GetpaidAPIError`` (status, problem, trace id)
for a 4xx/5xx answer.

``payments`` is an async view (``aget_token``, ``aget_session``: an ``httpx.AsyncClient``);
under ASGI (``uvicorn demo_site.asgi:application``) it never ties up a thread while
getpaid answers. ``create_payment`` is an ordinary sync view (``get_session``: a
``requests.Session``). Both use the same cached token: sync and async callers of one
credential share it.
"""

from __future__ import annotations

import logging
import re
import uuid
from decimal import Decimal
from typing import Any

import httpx
import requests
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from django_getpaid_auth import aget_session, aget_token, get_session
from django_getpaid_auth.exceptions import GetpaidAPIError, GetpaidAuthError

from .models import Membership

logger = logging.getLogger(__name__)

PAGE_SIZE = 20
#: Namespace of the shop's idempotency keys (any fixed UUID of your own).
PAYMENT_KEYS = uuid.UUID("5d3f0c8e-2b7a-4f61-9a0e-6c1b8d4e7f20")


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


@login_required
async def payments(request: HttpRequest) -> HttpResponse:
    """List the signed-in user's tenant payments, and when its getpaid token expires."""
    context: dict[str, Any] = {"tenant": None, "token": None, "payments": [], "error": ""}
    # Async views load the user and the membership with Django's async APIs; the loaded
    # user goes back on the request so the template (auth context processor) runs no SQL.
    user = request.user = await request.auser()
    try:
        membership = await Membership.objects.select_related("tenant").aget(user=user)
    except Membership.DoesNotExist:
        context["error"] = (
            f"User {user.get_username()!r} belongs to no tenant. Add a Membership "
            "in the admin (Demo shop › Memberships), or sign in as a demo user."
        )
        return render(request, "shop/payments.html", context)
    tenant = membership.tenant
    context["tenant"] = tenant
    # Identifies the "create a test payment" form shown now: submitting it twice (a double
    # click, the browser's resubmit) is the same operation, hence the same key.
    context["operation"] = uuid.uuid4().hex

    try:
        # Only the expiry, scopes and fingerprint reach the template, never the token
        # itself. The client below reuses this cached token (no second fetch).
        token = await aget_token(tenant)
        context["token"] = {
            "expires_at": token.expires_at,
            "scopes": sorted(token.scopes),
            "fingerprint": token.fingerprint,
        }
        # One client per call is cheap: clients of an event loop share its connections.
        client = await aget_session(tenant, raise_errors=True)
        context["environment"] = client.environment
        context["api_url"] = client.api_url
        # No Getpaid-Idempotency-Key: the client adds one (and keeps it on retries).
        response = await client.post(
            "/v2/payments/query",
            json={
                "type": "payments",
                "first": PAGE_SIZE,
                "sorts": [{"field": "created_at", "direction": "descending"}],
            },
        )
    except GetpaidAPIError as exc:
        # getpaid answered 4xx/5xx (after the retries): the message has the status, the
        # problem's title and detail and the trace id to quote to getpaid's support.
        logger.warning("getpaid API error for tenant %s: %s", tenant, exc)
        context["error"] = str(exc)
        context["trace_id"] = exc.trace_id
        return render(request, "shop/payments.html", context, status=502)
    except GetpaidAuthError as exc:
        # Configuration, credential and token errors: their text says what to fix and
        # never contains a secret or token.
        logger.warning("getpaid request for tenant %s failed: %s", tenant, exc)
        context["error"] = str(exc)
        return render(request, "shop/payments.html", context, status=502)
    except httpx.HTTPError as exc:  # transport errors are httpx's own
        logger.warning("getpaid API unreachable for tenant %s: %s", tenant, exc)
        context["error"] = f"The getpaid API could not be reached ({type(exc).__name__})."
        return render(request, "shop/payments.html", context, status=502)

    body = response.json()
    context["payments"] = _rows(body.get("data") or [])
    context["has_more"] = bool(body.get("cursor"))
    return render(request, "shop/payments.html", context)


def _test_payment(reference: str) -> dict[str, Any]:
    """A CreatePaymentRequest for 19.99 EUR, split between a seller and the platform."""
    return {
        "reference": reference,
        "amount": 1999,
        "currency": "EUR",
        "splits": {
            "type": "per_transaction",
            "accounts": [
                {
                    "type": "seller",
                    "id": "acc_44678r08jtm8zbt227tzhc4nw5",
                    "split": {"type": "fixed", "amount": 1799},
                },
                {
                    "type": "platform",
                    "id": "acc_4q90qx2kdczs59yqfq34p09qx6",
                    "split": {"type": "fixed", "amount": 200},
                    "processing_fee": {"percentage": 100},
                },
            ],
        },
        "standing_instruction": {"id": "sti_4tbftjwzxja1h71nzas1g0g1xm"},
    }


@login_required
@require_POST
def create_payment(request: HttpRequest) -> HttpResponse:
    """Create a test payment once per submitted form, however often it is submitted."""
    try:
        tenant = request.user.membership.tenant  # type: ignore[union-attr]
    except Membership.DoesNotExist:
        return redirect("shop:payments")
    operation = request.POST.get("operation", "")
    if not re.fullmatch(r"[0-9a-f]{32}", operation):
        messages.error(request, "The form is out of date; please try again.")
        return redirect("shop:payments")
    # The session's automatic key would protect only its own retries. A second submit
    # is a second call, so the key comes from the operation: the same form gives the same
    # key, and getpaid answers it with the first payment instead of creating another.
    key = str(uuid.uuid5(PAYMENT_KEYS, f"tenant-{tenant.pk}-payment-{operation}"))
    try:
        response = get_session(tenant, raise_errors=True).post(
            "/v2/payments",
            json=_test_payment(f"DEMO-{operation[:12].upper()}"),
            headers={"Getpaid-Idempotency-Key": key},
        )
    except GetpaidAPIError as exc:
        logger.warning("getpaid API error for tenant %s: %s", tenant, exc)
        messages.error(request, str(exc))
    except (GetpaidAuthError, requests.RequestException) as exc:
        logger.warning("creating a payment for tenant %s failed: %s", tenant, exc)
        messages.error(request, f"The payment could not be created ({type(exc).__name__}).")
    else:
        payment = response.json()
        messages.success(
            request,
            f"Payment {payment.get('id')} created: {payment.get('status')} "
            f"(trace id {response.headers.get('Getpaid-Trace-Id')}).",
        )
    return redirect("shop:payments")
