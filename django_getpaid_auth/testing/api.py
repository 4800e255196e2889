"""Emulation of getpaid's API (the part the package and its tests call), RFC 7807 errors.

Why a module of its own: what the API answers (routes, bearer authentication,
scopes, idempotency keys, payment queries with filters, sorts and cursors, problem
documents) is separate from how tokens are issued (:mod:`.token_server`) and from
HTTP serving (:mod:`._http`). :class:`ApiEmulation` checks tokens through any object
with ``read_token`` and ``verify_token`` (a ``FakeTokenServer``) and keeps its
payments in a :class:`~django_getpaid_auth.testing._payments.PaymentStore`.

Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol
from urllib.parse import unquote

from django_getpaid_auth.testing._http import Handler, ReplyError
from django_getpaid_auth.testing._payments import PAYMENT_STATUSES, PaymentStore
from django_getpaid_auth.testing.jwt import InvalidTokenError
from django_getpaid_auth.testing.token_server import ENVIRONMENT_AUDIENCES

__all__ = ["PAYMENT_READ_SCOPES", "PROBLEM_TYPE_BASE", "ApiEmulation", "TokenChecker"]

PROBLEM_TYPE_BASE = "https://docs.getpaid.io/ref/error-types"
PAYMENT_READ_SCOPES = ("payments:read", "payments:read_write")
_IDEMPOTENCY_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]{10,100}$")
_SORT_FIELDS = ("created_at", "amount", "seller_legal_name")


class TokenChecker(Protocol):
    """What the API needs from the token issuer (``FakeTokenServer`` provides it)."""

    def read_token(self, token: str) -> dict[str, Any]:
        """Claims of a token the issuer signed; raise InvalidTokenError otherwise."""
        ...

    def verify_token(self, token: str) -> dict[str, Any]:
        """Claims of a signed, unexpired, unrevoked token; raise InvalidTokenError otherwise."""
        ...


class ApiEmulation:
    """Answers API requests (paths ``/live/...``, ``/sandbox/...`` or ``/v2/...``).

    ``requests`` logs every request (client, method, path, environment, status, trace
    id, idempotency key, time); ``latency`` delays each answer through ``sleep``.
    """

    def __init__(
        self,
        tokens: TokenChecker,
        *,
        latency: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.tokens = tokens
        self.latency = latency
        self.store = PaymentStore()
        self.requests: list[dict[str, Any]] = []
        self._sleep = sleep
        self._lock = threading.Lock()

    def request_count(self, client_id: str | None = None) -> int:
        """Requests to the API (any status), total or per client (the token's ``azp``)."""
        with self._lock:
            if client_id is None:
                return len(self.requests)
            return sum(1 for r in self.requests if r["client_id"] == client_id)

    def reset_counters(self) -> None:
        """Forget logged requests (not payments)."""
        with self._lock:
            self.requests.clear()

    def handle(self, handler: Handler, path: str, body: bytes) -> None:
        """Answer one API request and log it."""
        trace_id = uuid.uuid4().hex
        entry: dict[str, Any] = {
            "client_id": None,
            "method": handler.command,
            "path": handler.path,
            "environment": None,
            "status": None,
            "trace_id": trace_id,
            "idempotency_key": handler.headers.get("Getpaid-Idempotency-Key"),
            "time": time.time(),
        }
        self._sleep(self.latency)
        try:
            status, payload = self._api_response(handler, path, body, entry)
            headers: dict[str, str] = {}
            content_type = "application/json"
        except ReplyError as reply:
            status, payload, headers = reply.status, reply.body, reply.headers
            content_type = reply.content_type
        if isinstance(payload, dict) and content_type == "application/problem+json":
            payload.setdefault("instance", path)
        headers["Getpaid-Trace-Id"] = trace_id
        entry["status"] = status
        with self._lock:
            self.requests.append(entry)
        handler.send(status, payload, content_type=content_type, headers=headers)

    def _api_response(
        self, handler: Handler, path: str, body: bytes, entry: dict[str, Any]
    ) -> tuple[int, Any]:
        segments = [unquote(s) for s in path.split("/") if s]
        if segments and segments[0] in ENVIRONMENT_AUDIENCES:
            environment: str | None = segments[0]
            segments = segments[1:]
        elif segments and segments[0] == "v2":
            environment = None
        else:
            _raise_problem(404, "not-found", "Not Found", f"No route for {path}")
        entry["environment"] = environment
        claims = self._authenticate(handler, environment, entry)

        method = handler.command
        route = tuple(segments)
        if route in ((), ("v2", "ping")):
            _require_method(method, ("GET",))
            return 200, {"status": "ok"}
        if route == ("v2", "payments", "query"):
            _require_method(method, ("POST",))
            _require_scope(claims, PAYMENT_READ_SCOPES)
            return 200, self._query_payments(claims["azp"], handler, body)
        if len(route) == 3 and route[:2] == ("v2", "payments"):
            _require_method(method, ("GET",))
            _require_scope(claims, PAYMENT_READ_SCOPES)
            payment = self.store.get(claims["azp"], route[2])
            if payment is None:
                _raise_problem(404, "not-found", "Not Found", f"Payment {route[2]} not found")
            return 200, payment
        _raise_problem(404, "not-found", "Not Found", f"No route for {path}")

    def _authenticate(
        self, handler: Handler, environment: str | None, entry: dict[str, Any]
    ) -> dict[str, Any]:
        authorization = handler.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if not authorization:
            _unauthorized("Missing Authorization header with a Bearer access token")
        if scheme.lower() != "bearer" or not token:
            _unauthorized("Malformed Authorization header; expected 'Bearer <token>'")
        try:
            unverified = self.tokens.read_token(token)
        except InvalidTokenError as exc:
            _unauthorized(f"Invalid access token: {exc}")
        if isinstance(unverified.get("azp"), str):
            entry["client_id"] = unverified["azp"]
        try:
            claims = self.tokens.verify_token(token)
        except InvalidTokenError as exc:
            _unauthorized(str(exc))
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
        if environment is not None:
            wanted = ENVIRONMENT_AUDIENCES[environment]
            if wanted not in audiences:
                _unauthorized(f"The access token audience is not valid for {environment}")
        elif not any(a in ENVIRONMENT_AUDIENCES.values() for a in audiences):
            _unauthorized("The access token audience is not valid for this API")
        return claims

    def _query_payments(self, client_id: str, handler: Handler, body: bytes) -> dict[str, Any]:
        key = handler.headers.get("Getpaid-Idempotency-Key")
        if key is None:
            _raise_problem(
                400, "bad-request", "Bad Request", "Missing Getpaid-Idempotency-Key header"
            )
        if not _IDEMPOTENCY_KEY_RE.match(key):
            _invalid({"Getpaid-Idempotency-Key": ["invalid_format"]})
        try:
            request = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError):
            request = None
        if request is None:
            _raise_problem(400, "bad-request", "Bad Request", "The request body is not valid JSON")
        if not isinstance(request, dict):
            _raise_problem(400, "bad-request", "Bad Request", "The request body must be an object")
        if request.get("type", "payments") != "payments":
            _invalid({"type": ["invalid_option"]})
        first = request.get("first", 20)
        if not isinstance(first, int) or isinstance(first, bool) or not 1 <= first <= 100:
            _invalid({"first": ["out_of_range"]})
        offset = 0
        if request.get("after") is not None:
            offset = _decode_cursor(request["after"])

        items = self.store.summaries(client_id)
        filters = request.get("filters") or {}
        if not isinstance(filters, dict):
            _invalid({"filters": ["invalid_type"]})
        items = _filter_payments(items, filters)
        sorts = request.get("sorts") or [{"field": "created_at", "direction": "descending"}]
        items = _sort_payments(items, sorts)

        page = items[offset : offset + first]
        response: dict[str, Any] = {"type": "payments", "data": page}
        if offset + first < len(items):
            response["cursor"] = _encode_cursor(offset + first)
        return response


def _problem(
    status: int, slug: str, title: str, detail: str, **extra: Any
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {
        "type": f"{PROBLEM_TYPE_BASE}#{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return status, body


def _raise_problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> NoReturn:
    _, body = _problem(status, slug, title, detail, **extra)
    raise ReplyError(status, body, content_type="application/problem+json", headers=headers)


def _unauthorized(detail: str) -> NoReturn:
    safe = detail.replace('"', "'")
    _raise_problem(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{safe}"'},
    )


def _invalid(errors: dict[str, list[str]]) -> NoReturn:
    _raise_problem(
        422,
        "invalid-parameters",
        "Invalid Parameters",
        "One or more parameters are invalid",
        errors=errors,
    )


def _require_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        _raise_problem(
            405,
            "method-not-allowed",
            "Method Not Allowed",
            f"Method {method} is not allowed for this resource",
            headers={"Allow": ", ".join(allowed)},
        )


def _require_scope(claims: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    granted = set(str(claims.get("scope") or "").split())
    if not granted.intersection(accepted):
        _raise_problem(
            403,
            "forbidden",
            "Forbidden",
            f"The access token lacks one of the required scopes: {' '.join(accepted)}",
            headers={
                "WWW-Authenticate": (
                    f'Bearer error="insufficient_scope", scope="{" ".join(accepted)}"'
                )
            },
        )


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode("ascii")


def _decode_cursor(cursor: Any) -> int:
    try:
        text = base64.urlsafe_b64decode(str(cursor).encode("ascii")).decode("ascii")
        prefix, _, number = text.partition(":")
        if prefix != "offset":
            raise ValueError(text)
        offset = int(number)
        if offset < 0:
            raise ValueError(text)
        return offset
    except (ValueError, UnicodeError, binascii.Error):
        _invalid({"after": ["invalid_cursor"]})


def _filter_payments(
    items: list[dict[str, Any]], filters: Mapping[str, Any]
) -> list[dict[str, Any]]:
    result = items
    if filters.get("id"):
        result = [p for p in result if p["id"] == filters["id"]]
    if filters.get("reference"):
        needle = str(filters["reference"]).lower()
        result = [p for p in result if needle in str(p.get("reference", "")).lower()]
    if filters.get("seller_legal_name"):
        needle = str(filters["seller_legal_name"]).lower()
        result = [
            p for p in result if needle in str(p.get("seller", {}).get("legal_name", "")).lower()
        ]
    statuses = filters.get("statuses")
    if statuses is not None:
        if not isinstance(statuses, list) or not statuses:
            _invalid({"filters.statuses": ["invalid_type"]})
        bad = [s for s in statuses if s not in PAYMENT_STATUSES]
        if bad:
            _invalid({"filters.statuses": ["invalid_option"]})
        result = [p for p in result if p.get("status") in statuses]
    return result


def _sort_payments(items: list[dict[str, Any]], sorts: Any) -> list[dict[str, Any]]:
    if not isinstance(sorts, list) or not sorts:
        _invalid({"sorts": ["invalid_type"]})
    result = list(items)
    for item in reversed(sorts):
        field = item.get("field") if isinstance(item, dict) else None
        direction = item.get("direction") if isinstance(item, dict) else None
        if field not in _SORT_FIELDS or direction not in ("ascending", "descending"):
            _invalid({"sorts": ["invalid_option"]})
        result.sort(
            key=functools.partial(_sort_key, field=field), reverse=direction == "descending"
        )
    return result


def _sort_key(payment: Mapping[str, Any], field: str) -> Any:
    if field == "amount":
        return payment.get("amount") or 0
    if field == "seller_legal_name":
        return str((payment.get("seller") or {}).get("legal_name") or "")
    return str(payment.get(field) or "")
