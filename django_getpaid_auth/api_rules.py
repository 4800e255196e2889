"""The rules for calling the getpaid API, without I/O: idempotency keys, retries, errors.

``GetpaidSession`` (requests) and ``GetpaidAsyncClient`` (httpx) apply the same
functions, so both behave alike. Nothing here sends, sleeps, reads settings or a clock:
callers pass the request's method and headers, the answer's status, headers and body,
the settings' numbers, the current time and a random number.

* **Idempotency keys**: a POST without a ``Getpaid-Idempotency-Key`` header (in any
  letter case) gets ``str(uuid.uuid4())``; a key the caller set is never replaced.
* **Retries** (see :func:`retry_delay`): GET, HEAD and OPTIONS, and any request that
  carries an idempotency key (every POST does), are retried after a connection failure
  with no complete answer, a 502/503/504, or a 429 whose ``Retry-After`` is at most
  ``MAX_RETRY_AFTER``; a 500 only when the request carries a key. PUT, PATCH and DELETE
  without a key are never retried, nor is any other 4xx.
* **Errors** (see :func:`build_error`): a 4xx/5xx answer becomes a
  :class:`~django_getpaid_auth.exceptions.GetpaidAPIError` subclass chosen by status,
  with the RFC 7807 problem document when the body is ``application/problem+json`` of at
  most ``MAX_PROBLEM_BYTES``.
"""

from __future__ import annotations

import email.utils
import http
import http.client
import json
import logging
import re
import ssl
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import timezone
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from .exceptions import (
    APIAuthorizationError,
    APIBadRequestError,
    APIConflictError,
    APINotFoundError,
    APIRateLimitedError,
    APIServerError,
    GetpaidAPIError,
    printable,
)

IDEMPOTENCY_HEADER = "Getpaid-Idempotency-Key"
TRACE_HEADER = "Getpaid-Trace-Id"
PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Methods retried without an idempotency key (they change nothing on the server).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Answers retried for any retryable request (a 500 needs an idempotency key).
RETRY_STATUSES = frozenset({502, 503, 504})
#: At most this many bytes of an error body are read and parsed as a problem document.
MAX_PROBLEM_BYTES = 64 * 1024
#: Longest text quoted from the server (problem title or detail) in a message.
MAX_TEXT = 300
#: Longest header value quoted (trace id, idempotency key) and longest path shown.
MAX_HEADER_TEXT = 200
#: Any wait a server asks for is clamped to [0, MAX_WAIT] seconds.
MAX_WAIT = 24 * 3600.0

_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,9})?")
_CUT = "…"

# Failures after which no complete answer arrived: the connection could not be made, or
# was reset or closed before (or while) the answer came. requests wraps most of them
# (ConnectionError, ChunkedEncodingError); urllib3's and http.client's can escape from
# custom adapters or streamed reads. Not retried: timeouts waiting for an answer (the
# server may still be working; a retry would multiply the caller's worst-case latency),
# TLS errors (a certificate does not fix itself) and anything else.
_TRANSPORT_FAILURES: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.NewConnectionError,
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)
_NOT_TRANSPORT_FAILURES: tuple[type[BaseException], ...] = (
    requests.exceptions.SSLError,
    requests.exceptions.ReadTimeout,
    urllib3.exceptions.SSLError,
)

_ERROR_CLASSES: dict[int, type[GetpaidAPIError]] = {
    400: APIBadRequestError,
    422: APIBadRequestError,
    401: APIAuthorizationError,
    403: APIAuthorizationError,
    404: APINotFoundError,
    409: APIConflictError,
    429: APIRateLimitedError,
}


# --- idempotency keys ----------------------------------------------------------------


def new_idempotency_key() -> str:
    """A fresh key: a random UUID4 in its canonical form (36 lower-case characters)."""
    return str(uuid.uuid4())


def idempotency_key(headers: Mapping[Any, Any]) -> str | None:
    """The ``Getpaid-Idempotency-Key`` of ``headers`` (any letter case), or None.

    Works on plain dicts too (the header name is compared case-insensitively). A bytes
    value is decoded as Latin-1, as HTTP headers are.
    """
    wanted = IDEMPOTENCY_HEADER.lower()
    for name, value in headers.items():
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(name, str) and name.lower() == wanted and value is not None:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def ensure_idempotency_key(method: str, headers: MutableMapping[Any, Any]) -> str | None:
    """The request's key after adding one to a POST that has none; None for no key.

    A key already present (in any letter case) is kept as is, whatever the method.
    """
    key = idempotency_key(headers)
    if key is None and method.upper() == "POST":
        key = headers[IDEMPOTENCY_HEADER] = new_idempotency_key()
    return key


# --- retries -------------------------------------------------------------------------


def may_retry(method: str, *, has_key: bool) -> bool:
    """Whether a request may be sent again at all: a safe method, or one with a key.

    PUT, PATCH and DELETE without an idempotency key are never retried.
    """
    return has_key or method.upper() in SAFE_METHODS


def is_transport_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means no complete answer arrived: connect error, reset, cut body.

    This includes a reset after the request was fully sent (the server may have acted:
    the idempotency key makes the retry safe). Timeouts waiting for the answer and TLS
    errors are not transport failures in this sense.
    """
    if isinstance(exc, _TRANSPORT_FAILURES):
        return not isinstance(exc, _NOT_TRANSPORT_FAILURES)
    return isinstance(exc, _httpx_transport_failures()) and not _caused_by_tls(exc)


def _caused_by_tls(exc: BaseException) -> bool:
    """httpx reports a failed TLS handshake as ConnectError: find the ssl.SSLError behind
    it, so the async client, like the sync one, does not retry TLS errors."""
    seen: BaseException | None = exc
    for _ in range(6):  # the chain is short: httpx -> httpcore -> ssl
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _httpx_transport_failures() -> tuple[type[BaseException], ...]:
    """httpx's equivalents (the async client), if httpx is loaded: no import here, so the
    sync path never pays for it. A read timeout is not one (the server may be working)."""
    httpx = sys.modules.get("httpx")
    if httpx is None:
        return ()
    return (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadError,
        httpx.WriteError,
        httpx.RemoteProtocolError,
    )


def retry_after_seconds(value: str | bytes | None, now: float) -> float | None:
    """RFC 9110 ``Retry-After``: delay-seconds (a decimal is tolerated) or an HTTP-date.

    ``now`` is the current time in epoch seconds (for the date form). Returns seconds
    within [0, MAX_WAIT], or None when the value is missing or not understood.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = value.strip()[:MAX_HEADER_TEXT]
    if _DECIMAL.fullmatch(value):
        return clamp_wait(float(value))
    if not value or not value.isascii():
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        when = parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return clamp_wait(when - now)


def clamp_wait(seconds: float) -> float:
    """Seconds within [0, MAX_WAIT]: no server makes a caller wait longer than a day."""
    return max(0.0, min(MAX_WAIT, seconds))


def backoff_delay(retry: int, base: float, ceiling: float, jitter: float) -> float:
    """Seconds before retry number ``retry`` (0 for the first retry).

    ``min(ceiling, base * 2**retry)`` times a factor from 0.5 to 1.0 given by ``jitter``
    (a random number from 0 to 1), as for token requests (RETRY_BACKOFF,
    RETRY_BACKOFF_MAX).
    """
    jitter = min(1.0, max(0.0, jitter))
    return min(ceiling, base * 2.0 ** min(retry, 64)) * (0.5 + jitter / 2)


def status_is_retryable(
    status: int, *, has_key: bool, retry_after: float | None, max_retry_after: float
) -> bool:
    """Whether an answer with ``status`` may be retried (for a request that may be).

    502/503/504; a 429 whose Retry-After (``retry_after`` seconds) is at most
    ``max_retry_after``; a 500 only with an idempotency key. Never another 4xx.
    """
    if status in RETRY_STATUSES:
        return True
    if status == 429:
        return retry_after is not None and retry_after <= max_retry_after
    return status == 500 and has_key


def retry_delay(
    method: str,
    *,
    has_key: bool,
    retry: int,
    retries: int,
    status: int | None = None,
    headers: Mapping[str, Any] | None = None,
    exc: BaseException | None = None,
    now: float,
    backoff: float,
    backoff_max: float,
    max_retry_after: float,
    jitter: float,
) -> float | None:
    """Seconds to wait before retrying, or None when the call must not be retried.

    Give either the answer (``status`` and ``headers``) or the exception ``exc``.
    ``retry`` counts the retries done so far, ``retries`` is the allowed number
    (API_RETRIES). A 429 waits its ``Retry-After``; everything else the jittered
    exponential backoff of :func:`backoff_delay`. Whether the request's body can be sent
    again is the caller's to check.
    """
    if retry >= retries or not may_retry(method, has_key=has_key):
        return None
    if exc is not None:
        if not is_transport_failure(exc):
            return None
        return backoff_delay(retry, backoff, backoff_max, jitter)
    if status is None:
        return None
    wait = None
    if status == 429:
        wait = retry_after_seconds((headers or {}).get("Retry-After"), now)
    if not status_is_retryable(
        status, has_key=has_key, retry_after=wait, max_retry_after=max_retry_after
    ):
        return None
    return wait if wait is not None else backoff_delay(retry, backoff, backoff_max, jitter)


# --- answers and errors ----------------------------------------------------------------


def header_text(value: Any, limit: int = MAX_HEADER_TEXT) -> str | None:
    """A header value safe to show: printable, at most ``limit`` characters; None if empty."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not value.strip():
        return None
    return _bounded(printable(value[: limit * 2]), limit)


def trace_id(headers: Mapping[str, Any]) -> str | None:
    """The answer's ``Getpaid-Trace-Id``, printable and bounded, or None."""
    return header_text(headers.get(TRACE_HEADER))


def url_path(url: str | None) -> str:
    """The path of ``url``, without the query string or fragment, printable and bounded."""
    path = urlsplit(url or "").path or "/"
    return _bounded(printable(path[: MAX_HEADER_TEXT * 2]), MAX_HEADER_TEXT)


def is_problem_json(content_type: Any) -> bool:
    """Whether a Content-Type is ``application/problem+json`` (parameters allowed)."""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    if not isinstance(content_type, str):
        return False
    return content_type.split(";", 1)[0].strip().lower() == PROBLEM_MEDIA_TYPE


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def problem_document(content_type: Any, body: bytes | None) -> dict[str, Any] | None:
    """The RFC 7807 problem document of an answer, or None.

    None unless the Content-Type is ``application/problem+json`` and the body is at most
    MAX_PROBLEM_BYTES of valid JSON (UTF-8, -16 or -32; no NaN; not nested deeper than
    Python's recursion limit) holding an object.
    """
    if not body or len(body) > MAX_PROBLEM_BYTES or not is_problem_json(content_type):
        return None
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # also UnicodeDecodeError, huge integers
        return None
    return document if isinstance(document, dict) else None


def error_class(status: int) -> type[GetpaidAPIError]:
    """The exception class for an error ``status`` (other 4xx: ``GetpaidAPIError``)."""
    if status >= 500:
        return APIServerError
    return _ERROR_CLASSES.get(status, GetpaidAPIError)


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + _CUT


def _masked(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[token]")
    return text


def _quoted(value: Any, secrets: Iterable[str]) -> str:
    """Server text for a message: a string only, secrets masked, printable, bounded."""
    if not isinstance(value, str) or not value.strip():
        return ""
    return _bounded(printable(_masked(value[: MAX_TEXT * 4], secrets)), MAX_TEXT)


def status_phrase(status: int) -> str:
    """The standard reason phrase of ``status`` (never the server's), or ""."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def error_message(
    status: int,
    method: str,
    path: str,
    problem: Mapping[str, Any] | None,
    trace: str | None,
    attempts: int,
    secrets: Iterable[str] = (),
) -> str:
    """``getpaid API 409 Conflict on POST /v2/payments: <title> — <detail> (trace id …)``.

    Only the problem's ``title`` and ``detail`` are quoted (printable, bounded, with
    ``secrets`` masked); never a header other than the trace id, never a body.
    """
    secrets = tuple(secrets)
    phrase = status_phrase(status)
    head = f"getpaid API {status}{' ' + phrase if phrase else ''} on {method} {path}"
    said = []
    if problem is not None:
        said = [t for t in (_quoted(problem.get(k), secrets) for k in ("title", "detail")) if t]
    context = [f"trace id {trace}" if trace else "no trace id"]
    if attempts > 1:
        context.append(f"{attempts} attempts")
    text = f"{head}: {' — '.join(said)}" if said else head
    return f"{text} ({', '.join(context)})"


def build_error(
    *,
    status: int,
    headers: Mapping[str, Any],
    body: bytes | None,
    method: str | None,
    url: str | None,
    request_headers: Mapping[Any, Any] | None = None,
    attempts: int = 1,
    failed_trace_ids: Iterable[str] = (),
    response: Any = None,
    secrets: Iterable[str] = (),
    now: float = 0.0,
) -> GetpaidAPIError | None:
    """The typed error for an answer with ``status``, or None below 400.

    ``headers`` are the answer's, ``body`` its first bytes (None when unread); only a
    body of at most MAX_PROBLEM_BYTES is parsed. ``request_headers`` give the
    idempotency key. ``secrets`` (the bearer tokens sent) are masked in quoted text.
    ``now`` (epoch seconds) reads an HTTP-date ``Retry-After`` of a 429.
    """
    if status < 400:
        return None
    problem = problem_document(headers.get("Content-Type"), body)
    trace = trace_id(headers)
    shown_method = printable(method or "?")[:20]
    path = url_path(url)
    attempts = max(1, attempts)
    cls = error_class(status)
    fields: dict[str, Any] = {
        "status_code": status,
        "problem": problem,
        "trace_id": trace,
        "idempotency_key": header_text(idempotency_key(request_headers or {})),
        "method": shown_method,
        "path": path,
        "attempts": attempts,
        "failed_trace_ids": tuple(failed_trace_ids),
        "response": response,
    }
    if cls is APIRateLimitedError:
        fields["retry_after"] = retry_after_seconds(headers.get("Retry-After"), now)
    message = error_message(status, shown_method, path, problem, trace, attempts, secrets)
    return cls(message, **fields)


# --- the API call log (logger django_getpaid_auth.api), one format for both clients ------

api_logger = logging.getLogger("django_getpaid_auth.api")


def log_retry(method: str, url: str | None, outcome: str, attempts: int, delay: float) -> None:
    """DEBUG: attempt ``attempts`` failed with ``outcome``; the next comes after ``delay`` s."""
    if api_logger.isEnabledFor(logging.DEBUG):
        api_logger.debug(
            "getpaid API %s %s: %s on attempt %d; retrying in %.0f ms",
            method,
            url_path(url),
            outcome,
            attempts,
            delay * 1000,
        )


def log_call(
    method: str,
    url: str | None,
    outcome: str,
    trace: str | None,
    attempts: int,
    started: float,
) -> None:
    """DEBUG: one line per call (method, path, status, trace id, attempts, elapsed ms);
    never headers, the query string or bodies."""
    if api_logger.isEnabledFor(logging.DEBUG):
        api_logger.debug(
            "getpaid API %s %s -> %s (trace id %s, %d attempt%s, %.0f ms)",
            method,
            url_path(url),
            outcome,
            trace or "-",
            attempts,
            "" if attempts == 1 else "s",
            (time.monotonic() - started) * 1000,
        )
