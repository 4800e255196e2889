"""The payments the fake API serves: deterministic seed data in the spec's shapes.

Why a module of its own: what a payment looks like (GetPaymentResponse) and its
summary in query results (QueryPaymentsResponse) is data, not HTTP. Every client
registered on ``FakeGetpaid`` starts with three deterministic payments (the package's
own tests and the example project's page list them); :class:`PaymentStore` keeps them
per client, thread-safe.

Standard library only.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "PAYMENT_STATUSES",
    "PaymentStore",
    "created_payment_response",
    "demo_payment",
    "payment_summary",
]

PAYMENT_STATUSES = (
    "initiated",
    "action_required",
    "submitted",
    "authorized",
    "captured",
    "declined",
    "failed",
    "partially_refunded",
    "refunded",
)


def _iso(ts: float) -> str:
    """Format like getpaid's DateTime: UTC, milliseconds, trailing Z (24 chars)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


_DEMO_SELLERS = (
    ("acc_4f5zanqzxfg9w9jj5e81bm6bc9", "AutoZentrum Düsseldorf GmbH"),
    ("acc_44678r08jtm8zbt227tzhc4nw5", "Titan Biking"),
    ("acc_4f5zanqzxfg9w9jj5e81bm6bc9", "AutoZentrum Düsseldorf GmbH"),
)
_PLATFORM = ("acc_4q90qx2kdczs59yqfq34p09qx6", "Titan Auto Parts GmbH")
_DEMO_PAYMENTS = (
    # (status, amount, currency, created_at, card number hint, scheme)
    ("captured", 1000, "EUR", "2025-09-01T22:05:48.479Z", "424242******4242", "visa"),
    ("refunded", 2500, "EUR", "2025-09-15T10:30:00.000Z", "555555******4444", "mastercard"),
    ("authorized", 4999, "EUR", "2025-10-01T08:00:00.000Z", "411111******1111", "visa"),
)


def demo_payment(
    client_id: str,
    index: int,
    now: float | None = None,
    *,
    amount: int | None = None,
    currency: str | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    """A payment shaped like the spec's GetPaymentResponse (CompletePayment example).

    With ``now``, a payment captured at that time (what creating one returns);
    ``amount``, ``currency`` and ``reference`` replace the demo values.
    """
    status, demo_amount, demo_currency, created, hint, scheme = _DEMO_PAYMENTS[(index - 1) % 3]
    seller_id, seller_name = _DEMO_SELLERS[(index - 1) % 3]
    amount = demo_amount if amount is None else amount
    currency = demo_currency if currency is None else currency
    if now is not None:
        status, created = "captured", _iso(now)
    platform_cut = amount // 10
    refunded = amount if status == "refunded" else 0
    captured = amount if status in ("captured", "refunded") else 0
    fees = round(amount * 0.029) + 25 if captured else 0
    payment: dict[str, Any] = {
        "id": f"pay_{client_id}_{index}",
        "status": status,
        "reference": f"ORD-202510-{index:04d}" if reference is None else reference,
        "created_at": created,
        "updated_at": created,
        "amount": amount,
        "currency": currency,
        "statement_descriptor": f"GPD*TITAN*202510-{index:04d}",
        "origin": {"type": "api"},
        "method": {
            "type": "card",
            "display_hint": hint,
            "card": {
                "scheme": scheme,
                "holder_name": "Jane Doe",
                "first_digits": hint[:6],
                "last_digits": hint[-4:],
                "expiry_month": 12,
                "expiry_year": 2030,
            },
        },
        "splits": {
            "type": "per_transaction",
            "accounts": [
                {
                    "type": "seller",
                    "id": seller_id,
                    "version": "2",
                    "legal_name": seller_name,
                    "split": {"type": "fixed", "amount": amount - platform_cut},
                    "processing_fee": {"percentage": 0},
                },
                {
                    "type": "platform",
                    "id": _PLATFORM[0],
                    "version": "0",
                    "legal_name": _PLATFORM[1],
                    "split": {"type": "fixed", "amount": platform_cut},
                    "processing_fee": {"percentage": 100},
                },
            ],
        },
        "refunds": [],
        "totals": {
            "net": captured - refunded - fees,
            "captured": captured,
            "refunded": refunded,
            "refundable": captured - refunded,
            "processing_fees": fees,
            "accounts": [],
        },
        "events": [
            {
                "index": 0,
                "type": "initiated",
                "occurred_at": created,
                "amount": amount,
                "currency": currency,
            }
        ],
    }
    if status == "refunded":
        payment["refunds"].append(
            {
                "id": f"rfd_{client_id}_{index}",
                "status": "completed",
                "type": "full",
                "reference": payment["reference"],
                "created_at": created,
                "updated_at": created,
                "amount": amount,
            }
        )
    return payment


#: Fields of a payment that the spec's CreatePaymentResponse carries.
_CREATE_RESPONSE_FIELDS = (
    "id",
    "status",
    "reference",
    "created_at",
    "updated_at",
    "statement_descriptor",
    "method",
    "splits",
    "totals",
)
_ACCOUNT_NAMES = dict((*_DEMO_SELLERS, _PLATFORM))


def created_payment_response(payment: Mapping[str, Any]) -> dict[str, Any]:
    """Project a full payment onto the spec's CreatePaymentResponse (``201`` body)."""
    return {key: copy.deepcopy(payment[key]) for key in _CREATE_RESPONSE_FIELDS if key in payment}


def _requested_splits(splits: Mapping[str, Any]) -> dict[str, Any]:
    """The calculated splits of a CreatePaymentRequest's ``splits`` (SplitsRequest)."""
    accounts = []
    for account in splits.get("accounts") or []:
        account_id = str(account.get("id", ""))
        accounts.append(
            {
                "type": account.get("type"),
                "id": account_id,
                "version": "0",
                "legal_name": _ACCOUNT_NAMES.get(account_id, "Unknown account"),
                "split": copy.deepcopy(account.get("split")),
                "processing_fee": copy.deepcopy(account.get("processing_fee")) or {"percentage": 0},
            }
        )
    return {"type": splits.get("type", "per_transaction"), "accounts": accounts}


def payment_summary(payment: Mapping[str, Any]) -> dict[str, Any]:
    """Project a full payment onto the item shape of the spec's QueryPaymentsResponse."""
    accounts = (payment.get("splits") or {}).get("accounts") or []
    seller = next((a for a in accounts if a.get("type") == "seller"), None)
    parties = [
        {"id": a.get("id"), "type": a.get("type"), "legal_name": a.get("legal_name")}
        for a in accounts
        if a.get("type") != "seller"
    ]
    method = payment.get("method") or {}
    summary_method = {"type": method.get("type"), "display_hint": method.get("display_hint")}
    if (method.get("card") or {}).get("scheme"):
        summary_method["scheme"] = method["card"]["scheme"]
    summary = {
        key: copy.deepcopy(payment.get(key))
        for key in ("id", "reference", "status", "amount", "currency", "created_at", "updated_at")
    }
    summary["method"] = summary_method
    summary["seller"] = (
        {"id": seller.get("id"), "legal_name": seller.get("legal_name")} if seller else None
    )
    summary["parties"] = parties
    return summary


class PaymentStore:
    """Payments per client id, in insertion order; every read returns copies."""

    #: How many demo payments :meth:`seed` gives a new client.
    seeded = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._payments: dict[str, dict[str, dict[str, Any]]] = {}

    def seed(self, client_id: str) -> None:
        """Give a client seen for the first time its deterministic demo payments."""
        with self._lock:
            if client_id in self._payments:
                return
            self._payments[client_id] = {}
            for index in range(1, self.seeded + 1):
                payment = demo_payment(client_id, index)
                self._payments[client_id][payment["id"]] = payment

    def add(self, client_id: str, payment: Mapping[str, Any]) -> dict[str, Any]:
        """Store a payment for ``client_id``; missing fields get spec-shaped defaults."""
        with self._lock:
            store = self._payments.setdefault(client_id, {})
            index = len(store) + 1
            full = demo_payment(client_id, index, now=time.time())
            full["id"] = f"pay_{client_id}_{index}"
            while full["id"] in store:
                index += 1
                full["id"] = f"pay_{client_id}_{index}"
            full.update(copy.deepcopy(dict(payment)))
            store[full["id"]] = full
            return copy.deepcopy(full)

    def create(self, client_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Store the payment a valid CreatePaymentRequest creates; return a copy (captured)."""
        with self._lock:
            store = self._payments.setdefault(client_id, {})
            index = len(store) + 1
            while f"pay_{client_id}_{index}" in store:
                index += 1
            full = demo_payment(
                client_id,
                index,
                now=time.time(),
                amount=request["amount"],
                currency=request["currency"],
                reference=request["reference"],
            )
            full["splits"] = _requested_splits(request["splits"])
            descriptor = (request.get("method") or {}).get("dynamic_descriptor")
            if isinstance(descriptor, str) and descriptor:
                full["statement_descriptor"] = f"GPD*{descriptor}"
            store[full["id"]] = full
            return copy.deepcopy(full)

    def payments(self, client_id: str) -> list[dict[str, Any]]:
        """Copies of the payments of ``client_id`` (insertion order)."""
        with self._lock:
            return copy.deepcopy(list(self._payments.get(client_id, {}).values()))

    def get(self, client_id: str, payment_id: str) -> dict[str, Any] | None:
        """A copy of one payment of ``client_id``, or ``None``."""
        with self._lock:
            return copy.deepcopy(self._payments.get(client_id, {}).get(payment_id))

    def summaries(self, client_id: str) -> list[dict[str, Any]]:
        """The payments of ``client_id`` as query result items (insertion order)."""
        with self._lock:
            return [payment_summary(p) for p in self._payments.get(client_id, {}).values()]
