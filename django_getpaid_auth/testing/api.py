"""Emulation of getpaid's API (the part the package and its tests call), RFC 7807 errors.

Why a module of its own: what the API answers (routes, bearer authentication,
scopes, idempotency keys, payment queries with filters, sorts and cursors, problem
documents, fault injection) is separate from how tokens are issued (:mod:`.token_server`) and from
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

from django_getpaid_auth.testing._http import FaultQueue, Handler, ReplyError
from django_getpaid_auth.testing._idempotency import (
    Answer,
    IdempotencyConflict,
    IdempotencyStore,
    request_fingerprint,
)
from django_getpaid_auth.testing._payments import (
    PAYMENT_STATUSES,
    PaymentStore,
    created_payment_response,
)
from django_getpaid_auth.testing.jwt import InvalidTokenError
from django_getpaid_auth.testing.token_server import _BAD_GATEWAY_HTML, ENVIRONMENT_AUDIENCES

__all__ = [
    "API_FAULT_KINDS",
    "PAYMENT_READ_SCOPES",
    "PAYMENT_WRITE_SCOPES",
    "PROBLEM_TYPE_BASE",
    "ApiEmulation",
    "TokenChecker",
]

PROBLEM_TYPE_BASE = "https://docs.getpaid.io/ref/error-types"
PAYMENT_READ_SCOPES = ("payments:read", "payments:read_write")
PAYMENT_WRITE_SCOPES = ("payments:read_write",)
#: Fault kinds accepted by :meth:`ApiEmulation.fail_next_requests` (a part of
#: ``FAULT_KINDS``: the others are about token answers).
API_FAULT_KINDS: tuple[str, ...] = (
    "500",
    "502_html",
    "503",
    "429",
    "reset",
    "timeout",
    "commit_then_reset",
)
_ANSWERED_FAULTS = frozenset({"500", "502_html", "503", "429"})
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
    id, idempotency key, whether it was a replay, the fault served, time); ``latency``
    delays each answer through ``sleep``. POSTs that create something honour
    ``Getpaid-Idempotency-Key`` through ``idempotency`` (an
    :class:`~django_getpaid_auth.testing._idempotency.IdempotencyStore`);
    :meth:`fail_next_requests` queues faults (:data:`API_FAULT_KINDS`).
    """

    def __init__(
        self,
        tokens: TokenChecker,
        *,
        latency: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        fault_timeout: Callable[[], float] = lambda: 5.0,
    ) -> None:
        self.tokens = tokens
        self.latency = latency
        self.store = PaymentStore()
        self.idempotency = IdempotencyStore()
        self.requests: list[dict[str, Any]] = []
        self._sleep = sleep
        self._fault_timeout = fault_timeout
        self._faults = FaultQueue(API_FAULT_KINDS, "API fault kind")
        self._lock = threading.Lock()

    def request_count(self, client_id: str | None = None) -> int:
        """Requests to the API (any status), total or per client (the token's ``azp``)."""
        with self._lock:
            if client_id is None:
                return len(self.requests)
            return sum(1 for r in self.requests if r["client_id"] == client_id)

    def idempotency_keys(self, client_id: str | None = None) -> list[str]:
        """``Getpaid-Idempotency-Key`` of each logged request that sent one, in order.

        A retried request appears once per attempt, so a retry that kept its key shows
        the same key twice. Per client (the token's ``azp``) when ``client_id`` is given.
        """
        with self._lock:
            return [
                r["idempotency_key"]
                for r in self.requests
                if r["idempotency_key"] is not None
                and (client_id is None or r["client_id"] == client_id)
            ]

    def reset_counters(self) -> None:
        """Forget logged requests (not payments, nor answers kept for idempotency)."""
        with self._lock:
            self.requests.clear()

    def fail_next_requests(
        self, kind: str, count: int = 1, *, retry_after: int | None = None
    ) -> None:
        """Queue ``count`` faults of ``kind`` (:data:`API_FAULT_KINDS`) for the next requests."""
        self._faults.add(kind, count, retry_after)

    def clear_faults(self) -> None:
        """Drop API faults that have not been served yet."""
        self._faults.clear()

    def handle(self, handler: Handler, path: str, body: bytes) -> None:
        """Answer one API request (or serve the next queued fault) and log it."""
        trace_id = uuid.uuid4().hex
        entry: dict[str, Any] = {
            "client_id": None,
            "method": handler.command,
            "path": handler.path,
            "environment": None,
            "status": None,
            "trace_id": trace_id,
            "idempotency_key": handler.headers.get("Getpaid-Idempotency-Key"),
            "replayed": False,
            "fault": None,
            "time": time.time(),
        }
        self._sleep(self.latency)
        kind, retry_after = self._faults.next() or (None, None)
        if kind is not None:
            entry["fault"] = kind
            entry["client_id"] = self._peek_client_id(handler)
        if kind == "reset":
            self._log(entry, None)
            handler.reset_connection()
            return
        if kind == "timeout":
            self._sleep(self._fault_timeout())
            kind = "500"
        if kind in _ANSWERED_FAULTS:
            answer = _fault_answer(kind, retry_after, path, trace_id)
        else:
            answer = self._answer(handler, path, body, entry, trace_id)
        if kind == "commit_then_reset":
            # The request took effect (and its answer is kept for a replay); the
            # client never hears of it.
            entry["committed_status"] = answer.status
            self._log(entry, None)
            handler.reset_connection()
            return
        headers = dict(answer.headers)
        if answer.trace_id:
            headers["Getpaid-Trace-Id"] = answer.trace_id
        entry["trace_id"] = answer.trace_id or None
        self._log(entry, answer.status)
        handler.send(answer.status, answer.body, content_type=answer.content_type, headers=headers)

    def _log(self, entry: dict[str, Any], status: int | None) -> None:
        entry["status"] = status
        with self._lock:
            self.requests.append(entry)

    def _peek_client_id(self, handler: Handler) -> str | None:
        """The ``azp`` of the bearer token, checked or not (to log faulted requests)."""
        scheme, _, token = handler.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            azp = self.tokens.read_token(token.strip()).get("azp")
        except InvalidTokenError:
            return None
        return azp if isinstance(azp, str) else None

    def _answer(
        self, handler: Handler, path: str, body: bytes, entry: dict[str, Any], trace_id: str
    ) -> Answer:
        try:
            return self._api_response(handler, path, body, entry, trace_id)
        except ReplyError as reply:
            return _reply_answer(reply, path, trace_id)

    def _api_response(
        self, handler: Handler, path: str, body: bytes, entry: dict[str, Any], trace_id: str
    ) -> Answer:
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
            return Answer(200, {"status": "ok"}, "application/json", trace_id)
        if route == ("v2", "payments"):
            _require_method(method, ("POST",))
            _require_scope(claims, PAYMENT_WRITE_SCOPES)
            key = _idempotency_key(handler)
            client_id = claims["azp"]
            return self._idempotent(
                (environment, client_id, key),
                handler,
                path,
                body,
                entry,
                trace_id,
                lambda: (201, self._create_payment(client_id, body)),
            )
        if route == ("v2", "payments", "query"):
            _require_method(method, ("POST",))
            _require_scope(claims, PAYMENT_READ_SCOPES)
            # A query changes nothing: the key is required, but every query is answered
            # afresh (no replay, no conflict for a reused key).
            _idempotency_key(handler)
            page = self._query_payments(claims["azp"], body)
            return Answer(200, page, "application/json", trace_id)
        if len(route) == 3 and route[:2] == ("v2", "payments"):
            _require_method(method, ("GET",))
            _require_scope(claims, PAYMENT_READ_SCOPES)
            payment = self.store.get(claims["azp"], route[2])
            if payment is None:
                _raise_problem(404, "not-found", "Not Found", f"Payment {route[2]} not found")
            return Answer(200, payment, "application/json", trace_id)
        _raise_problem(404, "not-found", "Not Found", f"No route for {path}")

    def _idempotent(
        self,
        scope: tuple[str | None, str, str],
        handler: Handler,
        path: str,
        body: bytes,
        entry: dict[str, Any],
        trace_id: str,
        execute: Callable[[], tuple[int, Any]],
    ) -> Answer:
        """Replay the first answer to this key, refuse a conflicting use, or run ``execute``."""
        fingerprint = request_fingerprint(handler.command, path, body)
        try:
            stored = self.idempotency.begin(scope, fingerprint)
        except IdempotencyConflict as exc:
            _raise_problem(409, "conflict", "Conflict", exc.detail)
        if stored is not None:
            entry["replayed"] = True
            return stored
        answer: Answer | None = None
        try:
            try:
                status, payload = execute()
                answer = Answer(status, payload, "application/json", trace_id)
            except ReplyError as reply:
                answer = _reply_answer(reply, path, trace_id)
        finally:
            self.idempotency.finish(scope, answer)
        return answer

    def _create_payment(self, client_id: str, body: bytes) -> dict[str, Any]:
        request = _json_object(body)
        errors: dict[str, list[str]] = {}
        reference = request.get("reference")
        if reference is None:
            errors["reference"] = ["required"]
        elif not isinstance(reference, str) or not 1 <= len(reference) <= 50:
            errors["reference"] = ["invalid_type"]
        amount = request.get("amount")
        if amount is None:
            errors["amount"] = ["required"]
        elif not isinstance(amount, int) or isinstance(amount, bool):
            errors["amount"] = ["invalid_type"]
        elif amount < 1:
            errors["amount"] = ["out_of_range"]
        currency = request.get("currency")
        if currency is None:
            errors["currency"] = ["required"]
        elif not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            errors["currency"] = ["invalid_option"]
        splits = request.get("splits")
        if splits is None:
            errors["splits"] = ["required"]
        elif (
            not isinstance(splits, dict)
            or not isinstance(splits.get("accounts"), list)
            or not splits["accounts"]
            or not all(isinstance(a, dict) for a in splits["accounts"])
        ):
            errors["splits"] = ["invalid_type"]
        instruction = request.get("standing_instruction")
        if instruction is None:
            errors["standing_instruction"] = ["required"]
        elif not isinstance(instruction, dict) or not isinstance(instruction.get("id"), str):
            errors["standing_instruction"] = ["invalid_type"]
        method = request.get("method")
        if method is not None and not isinstance(method, dict):
            errors["method"] = ["invalid_type"]
        if errors:
            _invalid(errors)
        return created_payment_response(self.store.create(client_id, request))

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

    def _query_payments(self, client_id: str, body: bytes) -> dict[str, Any]:
        request = _json_object(body)
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


def _idempotency_key(handler: Handler) -> str:
    """The request's ``Getpaid-Idempotency-Key`` (any letter case); 400 or 422 when unusable."""
    key = handler.headers.get("Getpaid-Idempotency-Key")
    if key is None:
        _raise_problem(400, "bad-request", "Bad Request", "Missing Getpaid-Idempotency-Key header")
    if not _IDEMPOTENCY_KEY_RE.match(key):
        _invalid({"Getpaid-Idempotency-Key": ["invalid_format"]})
    return key


def _json_object(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body (an empty body is ``{}``); 400 otherwise."""
    try:
        request = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        request = None
    if request is None:
        _raise_problem(400, "bad-request", "Bad Request", "The request body is not valid JSON")
    if not isinstance(request, dict):
        _raise_problem(400, "bad-request", "Bad Request", "The request body must be an object")
    return request


def _reply_answer(reply: ReplyError, path: str, trace_id: str) -> Answer:
    payload = reply.body
    if isinstance(payload, dict) and reply.content_type == "application/problem+json":
        payload.setdefault("instance", path)
    return Answer(reply.status, payload, reply.content_type, trace_id, reply.headers)


def _fault_answer(kind: str, retry_after: int | None, path: str, trace_id: str) -> Answer:
    """The answer of a fault that answers (not ``reset``/``commit_then_reset``)."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if kind == "502_html":
        # A proxy in front of getpaid answers: HTML, and no trace id of getpaid's.
        return Answer(502, _BAD_GATEWAY_HTML, "text/html; charset=utf-8", "", headers)
    if kind == "429":
        headers["Retry-After"] = str(2 if retry_after is None else retry_after)
        _, body = _problem(429, "too-many-requests", "Too Many Requests", "Rate limit exceeded")
        status = 429
    elif kind == "503":
        status, body = _problem(
            503,
            "service-unavailable",
            "Service Unavailable",
            "The service is temporarily unavailable",
        )
    else:
        status, body = _problem(
            500,
            "internal-server-error",
            "Internal Server Error",
            "An unexpected server error occurred; retry with the same Getpaid-Idempotency-Key.",
        )
    body["instance"] = path
    return Answer(status, body, "application/problem+json", trace_id, headers)


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
