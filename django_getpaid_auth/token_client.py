"""The HTTP call to the OAuth token endpoint, and the mapping of its answers to errors.

Only this module talks to ``GETPAID_AUTH["TOKEN_URL"]``. It retries what is worth
retrying (5xx, timeouts, connection errors: jittered exponential backoff; a 429 with a
short Retry-After: once) and turns every other answer into a typed ``TokenRequestError``
whose message never contains the secret or a token.

Every part of the answer is untrusted and bounded:

* time: one request (connect, headers and body) ends after TOKEN_REQUEST_DEADLINE
  seconds, however slowly the server drips bytes (a watchdog shuts the socket down), and
  all attempts of one ``request_token`` call together stay within twice that;
* size: a body above MAX_TOKEN_RESPONSE_BYTES (declared or streamed, compressed or not)
  is refused without being read;
* values: the access token must be an RFC 6750 ``b64token`` of at most
  ``tokens.MAX_TOKEN_LENGTH`` characters; ``expires_in`` a positive whole number of
  seconds (capped at MAX_EXPIRES_IN); waits from ``Retry-After`` and friends are clamped
  to [0, MAX_WAIT];
* text quoted from the server is scrubbed of the client secret and of control characters.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import logging
import random
import re
import socket
import threading
import time
import zlib
from typing import Any, TypedDict
from urllib.parse import quote, quote_plus, urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.poolmanager
from django.views.decorators.debug import sensitive_variables

from . import api_rules, clock, quota, telemetry
from .conf import getpaid_settings
from .credentials import CredentialSnapshot
from .exceptions import (
    AudienceNotEnabledError,
    ClientGrantMissingError,
    InvalidClientError,
    InvalidScopeError,
    MalformedTokenResponseError,
    RateLimitedError,
    TokenEndpointUnavailableError,
    TokenRequestError,
    UnauthorizedClientError,
    printable,
)
from .quota import QuotaReport
from .scopes import split_scopes
from .tokens import MAX_TOKEN_LENGTH, AccessToken, from_timestamp, is_valid_token_value, jwt_expiry
from .user_agent import USER_AGENT

logger = logging.getLogger("django_getpaid_auth.token_client")

TRACE_HEADER = "Getpaid-Trace-Id"
MAX_DESCRIPTION = 300
MAX_ERROR = 60
# A secret (or form of it) shorter than this is masked only where it stands alone (not
# inside a longer run of letters and digits): masking every "a" of a one-letter test
# secret would garble every message. Longer ones are masked wherever they occur.
MAX_HEADER_TEXT = 200
# Longest lifetime believed from ``expires_in``: a larger value is capped to this (the
# token is then refreshed well before a year has passed; the API's 401 triggers a refetch
# sooner if the token really expired). Digit strings longer than 20 characters are refused.
MAX_EXPIRES_IN = 365 * 24 * 3600
# Any wait a server asks for (Retry-After, x-ratelimit-reset, Auth0 quota) is clamped here.
MAX_WAIT = api_rules.MAX_WAIT
# A 429 that does not say how long to wait is remembered for this long.
DEFAULT_RETRY_AFTER = 60.0

_CHUNK = 16 * 1024
_DIGITS = re.compile(r"[0-9]{1,20}")
# RFC 6749 scope-token: %x21 / %x23-5B / %x5D-7E
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")
_MAX_SCOPES = 256
_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
)


# --- secrets kept out of tracebacks -----------------------------------------------------


class _Secret(str):
    """A str whose repr hides it: Django's debug page and error reports show locals by repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'********************'"


class _Context(TypedDict):
    """Who asked: the keyword arguments every TokenRequestError of a request gets."""

    tenant: str
    environment: str


class _RedactedBody(dict[str, str]):
    """The token request body (it holds the secret); its repr hides every value."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{key!r}: '********************'" for key in self) + "}"


# --- one deadline per request -------------------------------------------------------------

_local = threading.local()
_REARM = 0.1
_MAX_REARMS = 600


def _shutdown(sock: Any) -> None:
    if sock is None:
        return
    # socket.socket's own shutdown, not SSLSocket's (which drops its SSL object under
    # the reading thread): unblocks a recv() in another thread with EOF.
    with contextlib.suppress(OSError, TypeError, ValueError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _shutdown_conn(conn: Any) -> None:
    _shutdown(getattr(conn, "sock", None))
    # A response that ends with the connection ("Connection: close", no length) owns the
    # socket after the headers: the connection no longer points at it.
    _shutdown(getattr(conn, "_getpaid_sock", None))


class _Deadline:
    """The end of one token request, enforced even against a server that drips bytes.

    A read timeout applies to each socket read, so a server sending a byte every
    second keeps a plain request alive forever. The connection a request uses is
    registered here (see ``_WatchedPoolMixin``) and a watchdog timer shuts its socket
    down at the deadline, which ends any blocked read; the request then reports a timeout.
    Reads are also checked against the deadline between chunks.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, seconds)
        self.at = time.monotonic() + self.seconds
        self.fired = False
        self._done = False
        self._rearms = 0
        self._conns: list[Any] = []
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.at

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def watch(self, conn: Any) -> None:
        with self._lock:
            if self._done:
                return
            self._conns.append(conn)
            if self.fired:
                _shutdown_conn(conn)
            elif self._timer is None:
                self._arm(self.remaining())

    def unwatch(self, conn: Any) -> None:
        with self._lock:
            self._conns = [c for c in self._conns if c is not conn]

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._conns.clear()
            if self._timer is not None:
                self._timer.cancel()

    def _arm(self, delay: float) -> None:
        timer = threading.Timer(delay, self._fire)
        timer.daemon = True
        timer.name = "getpaid-token-deadline"
        self._timer = timer
        timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for conn in self._conns:
                _shutdown_conn(conn)
            # A connection still being set up gets its socket after this: look again
            # shortly (the connect itself is bounded by the connect timeout).
            if self._conns and self._rearms < _MAX_REARMS:
                self._rearms += 1
                self._arm(_REARM)


class _WatchedPoolMixin:
    """Registers each connection handed to a token request with the request's deadline."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        deadline = getattr(_local, "deadline", None)
        if deadline is not None and conn is not None:
            conn._getpaid_deadline = deadline
            deadline.watch(conn)
        return conn

    def _put_conn(self, conn: Any) -> None:
        deadline = getattr(conn, "_getpaid_deadline", None)
        if deadline is not None:
            deadline.unwatch(conn)  # back in the pool: another request may take it
            conn._getpaid_deadline = None
        super()._put_conn(conn)  # type: ignore[misc]


class _SocketMemoryMixin:
    """Remembers the connected socket even after http.client hands it to a response."""

    def connect(self) -> None:
        self._getpaid_sock = None
        super().connect()  # type: ignore[misc]
        self._getpaid_sock = self.sock  # type: ignore[attr-defined]


class _HTTPConnection(_SocketMemoryMixin, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_SocketMemoryMixin, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(_WatchedPoolMixin, urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _WatchedHTTPSConnectionPool(_WatchedPoolMixin, urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class _TokenAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections can be cut at a token request's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: Any, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # HTTP(S) proxies use the standard pools; SOCKS pools are left alone (those
        # requests are then bounded between reads only).
        if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


_http = requests.Session()
_http.headers["User-Agent"] = USER_AGENT
# getpaid_check runs many token requests at once: keep a connection per worker.
_http.mount("https://", _TokenAdapter(pool_maxsize=64))
_http.mount("http://", _TokenAdapter(pool_maxsize=64))


# --- the request --------------------------------------------------------------------------


@sensitive_variables()
def request_parts(
    snapshot: CredentialSnapshot,
) -> tuple[_Context, _Secret, _RedactedBody, tuple[str, str] | None]:
    """What a token request sends, for either HTTP client: the error context, the secret
    (for scrubbing), the body and, for client_secret_basic, the Basic user and password."""
    context: _Context = {"tenant": snapshot.tenant_label, "environment": snapshot.environment}
    secret = _Secret(snapshot.client_secret())
    body = _RedactedBody(grant_type="client_credentials", audience=snapshot.audience)
    if snapshot.scopes:
        body["scope"] = " ".join(snapshot.scopes)
    basic = None
    if getpaid_settings.typed.client_auth_method == "client_secret_basic":
        # RFC 6749 2.3.1: both are form-urlencoded before Basic encoding.
        basic = (quote_plus(snapshot.client_id), _Secret(quote_plus(secret)))
    else:
        body["client_id"] = snapshot.client_id
        body["client_secret"] = secret
    return context, secret, body, basic


def body_kind() -> str:
    """``"data"`` (form) or ``"json"``: the keyword both HTTP clients take for the body."""
    return "data" if getpaid_settings.typed.token_request_format == "form" else "json"


#: Request headers of every token request. Compression would let a small answer grow
#: past MAX_TOKEN_RESPONSE_BYTES.
REQUEST_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}


def request_budget() -> float:
    """Upper bound in seconds of one ``request_token`` call, all attempts and waits included.

    Each attempt may take TOKEN_REQUEST_DEADLINE; together they stop at twice that.
    """
    return 2 * _deadline_seconds()


def _deadline_seconds() -> float:
    return getpaid_settings.typed.token_request_deadline


@sensitive_variables()
def request_token(
    snapshot: CredentialSnapshot, answers: list[QuotaReport | None] | None = None
) -> AccessToken:
    """Fetch a new token for ``snapshot`` (no caching here), retrying transient failures.

    Takes at most ``request_budget()`` seconds (plus a short wait for a 429 that asks
    for at most MAX_RETRY_AFTER seconds). ``answers``, when given, gets one item per
    HTTP request sent: the quota figures its answer carried, or None.
    """
    plan = RetryPlan()
    if answers is None:
        answers = []
    while True:
        try:
            return _request_once(snapshot, plan.attempt_seconds(), answers)
        except (TokenEndpointUnavailableError, RateLimitedError) as exc:
            delay = plan.wait_after(exc)
            if delay is None:
                raise
            time.sleep(delay)


class RetryPlan:
    """When one ``request_token`` call tries again, shared by the sync and async clients.

    5xx, timeouts and connection errors: jittered exponential backoff while the budget
    (twice TOKEN_REQUEST_DEADLINE) allows another useful attempt; a 429 with a
    Retry-After of at most MAX_RETRY_AFTER: waited once, the budget extended by it.
    """

    def __init__(self) -> None:
        self.attempts = 1 + getpaid_settings.typed.token_request_retries
        self.per_attempt = _deadline_seconds()
        self.ends = time.monotonic() + 2 * self.per_attempt
        self.shortest = min(1.0, self.per_attempt / 2)  # no use starting with less time
        self.attempt = 0
        self.waited_for_rate_limit = False

    def attempt_seconds(self) -> float:
        """The deadline of the next attempt."""
        return min(self.per_attempt, self.ends - time.monotonic())

    def wait_after(self, exc: TokenRequestError) -> float | None:
        """Seconds to wait before the next attempt after ``exc``, or None: give up."""
        attempt, self.attempt = self.attempt, self.attempt + 1
        if attempt + 1 >= self.attempts:
            return None
        if isinstance(exc, RateLimitedError):
            wait = exc.retry_after
            limit = getpaid_settings.typed.max_retry_after
            if self.waited_for_rate_limit or wait is None or not 0 <= wait <= limit:
                return None
            self.waited_for_rate_limit = True
            logger.warning("%s; waiting %.2fs once before retrying", exc, wait)
            self.ends += wait
            return float(wait)
        if not isinstance(exc, TokenEndpointUnavailableError):
            return None
        delay = _backoff(attempt)
        if self.ends - time.monotonic() - delay < self.shortest:
            return None
        logger.warning(
            "%s; retrying in %.2fs (attempt %d/%d)", exc, delay, attempt + 2, self.attempts
        )
        return delay


def _backoff(attempt: int) -> float:
    base = getpaid_settings.typed.retry_backoff
    ceiling = getpaid_settings.typed.retry_backoff_max
    return min(ceiling, base * (2**attempt)) * random.uniform(0.5, 1.0)  # noqa: S311


@sensitive_variables()
def _request_once(
    snapshot: CredentialSnapshot, seconds: float, answers: list[QuotaReport | None]
) -> AccessToken:
    if telemetry.ENABLED:
        with telemetry.request_span(snapshot.pk, snapshot.environment, token_server()) as span:
            return _send(snapshot, seconds, answers, span)
    return _send(snapshot, seconds, answers, None)


def token_server() -> str:
    """The token endpoint's host, for traces."""
    return urlsplit(getpaid_settings.typed.token_url).hostname or ""


def note_answer(answers: list[QuotaReport | None], status: int, headers: Any, span: Any) -> None:
    """Keep what an answer's headers say of quota and rate limits (both HTTP clients)."""
    answers[-1] = quota.from_headers(headers, status=status, now=time.time())
    if span is not None:
        span.status = status


@sensitive_variables()
def _send(
    snapshot: CredentialSnapshot, seconds: float, answers: list[QuotaReport | None], span: Any
) -> AccessToken:
    context, secret, body, basic = request_parts(snapshot)
    auth = requests.auth.HTTPBasicAuth(*basic) if basic is not None else None
    kwargs: dict[str, Any] = {body_kind(): body}
    connect_timeout, read_timeout = getpaid_settings.typed.token_request_timeout
    bounded = max(seconds, 0.001)
    started = clock.now()
    deadline = _Deadline(seconds)
    _local.deadline = deadline
    answers.append(None)
    try:
        try:
            response = _http.post(
                getpaid_settings.typed.token_url,
                auth=auth,
                timeout=(min(connect_timeout, bounded), min(read_timeout, bounded)),
                headers=REQUEST_HEADERS,
                allow_redirects=False,
                stream=True,
                **kwargs,
            )
        except _TRANSPORT_ERRORS as exc:
            # "from None": the chained requests/urllib3 frames hold the request body.
            raise _transport_error(exc, deadline, context) from None
        try:
            note_answer(answers, response.status_code, response.headers, span)
            logger.debug(
                "token endpoint answered %s in %.0f ms for tenant=%s environment=%s",
                response.status_code,
                (clock.now() - started) * 1000,
                snapshot.tenant_label,
                snapshot.environment,
            )
            # Both return (never raise) their error, so no frame holding the answer's
            # text (and possibly a token) is part of the traceback.
            # The body is never a local here: this frame is in the error's traceback.
            outcome = answer_outcome(
                response.status_code,
                response.headers,
                _read_body(response, deadline, context, secret, strict=response.status_code == 200),
                snapshot,
                secret,
                context,
                started,
            )
        finally:
            response.close()
    finally:
        _local.deadline = None
        deadline.finish()
    if isinstance(outcome, TokenRequestError):
        raise outcome
    return outcome


def _transport_error(
    exc: BaseException, deadline: _Deadline, context: _Context, status: int | None = None
) -> TokenEndpointUnavailableError:
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)
    if deadline.expired() or isinstance(exc, timeouts):
        return TokenEndpointUnavailableError(
            f"Token endpoint timed out (no complete answer within {deadline.seconds:g}s).",
            status=status,
            **context,
        )
    return TokenEndpointUnavailableError(
        f"Cannot reach the token endpoint ({type(exc).__name__}).", status=status, **context
    )


@sensitive_variables()
def answer_outcome(
    status: int,
    headers: Any,
    body: bytes | TokenRequestError,
    snapshot: CredentialSnapshot,
    secret: str,
    context: _Context,
    started: float,
) -> AccessToken | TokenRequestError:
    """The token, or the error, that an answer means (``body`` as read by either client).

    Returns (never raises) the error, so no frame holding the answer's text (and possibly
    a token) is part of a traceback.
    """
    if status == 200:
        if isinstance(body, TokenRequestError):
            return body
        return _parse_success(headers, body, snapshot, secret, context, started)
    if isinstance(body, TokenRequestError):
        body = b""  # classified by its status alone
    return _error_for(status, headers, body, snapshot, context, secret)


def body_refusal(headers: Any, secret: str) -> str | None:
    """Why a body must not be read at all (declared too large, unknown encoding), or None."""
    limit = getpaid_settings.typed.max_token_response_bytes
    declared = (headers.get("Content-Length") or "").strip()
    if declared and not _DIGITS.fullmatch(declared):
        return "with an invalid Content-Length"
    if declared and int(declared) > limit:
        return too_large_reason()
    encoding = content_encoding(headers)
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        return f"with Content-Encoding {_scrub(encoding, secret, 20)!r}"
    return None


def too_large_reason() -> str:
    limit = getpaid_settings.typed.max_token_response_bytes
    return f"with a body larger than {limit} bytes (MAX_TOKEN_RESPONSE_BYTES)"


def content_encoding(headers: Any) -> str:
    return str(headers.get("Content-Encoding") or "identity").strip().lower()


def refused_body(
    status: int, headers: Any, reason: str, context: _Context, secret: str, *, strict: bool
) -> bytes | TokenRequestError:
    """A body that was not (fully) read: an error for a 200, ``b""`` for an error answer."""
    if not strict:
        return b""
    return MalformedTokenResponseError(
        f"Token endpoint answered {status} but {reason}.",
        status=status,
        trace_id=_header_text(headers, TRACE_HEADER, secret),
        **context,
    )


def decoded_body(data: bytes, headers: Any) -> bytes | None:
    """The raw body ``data`` decoded (at most MAX_TOKEN_RESPONSE_BYTES), None: too large."""
    if content_encoding(headers) == "identity":
        return data
    return _inflate(data, getpaid_settings.typed.max_token_response_bytes)


@sensitive_variables()
def _read_body(
    response: requests.Response,
    deadline: _Deadline,
    context: _Context,
    secret: str,
    *,
    strict: bool,
) -> bytes | TokenRequestError:
    """The whole body, at most MAX_TOKEN_RESPONSE_BYTES, read before the deadline.

    ``strict`` (a 200): a body too large or in an unsupported encoding is a
    MalformedTokenResponseError. Otherwise (an error answer, classified by its status)
    such a body is ignored: ``b""``. A deadline or transport failure is a
    TokenEndpointUnavailableError either way.
    """
    status = response.status_code
    limit = getpaid_settings.typed.max_token_response_bytes

    def refused(reason: str) -> bytes | TokenRequestError:
        return refused_body(status, response.headers, reason, context, secret, strict=strict)

    refusal = body_refusal(response.headers, secret)
    if refusal is not None:
        return refused(refusal)
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = response.raw.read(min(_CHUNK, limit + 1 - size), decode_content=False)
            if deadline.expired():
                chunks.clear()
                return _transport_error(TimeoutError(), deadline, context, status)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                chunks.clear()
                return refused(too_large_reason())
    except _TRANSPORT_ERRORS as exc:
        chunks.clear()
        return _transport_error(exc, deadline, context, status)
    data = b"".join(chunks)
    chunks.clear()
    inflated = decoded_body(data, response.headers)
    if inflated is None:
        return refused(too_large_reason())
    return inflated


def _inflate(data: bytes, limit: int) -> bytes | None:
    """gzip/zlib/raw deflate ``data``, at most ``limit`` bytes of output (None: more)."""
    for wbits in (zlib.MAX_WBITS | 32, -zlib.MAX_WBITS):
        inflater = zlib.decompressobj(wbits)
        try:
            output = inflater.decompress(data, limit + 1)
        except zlib.error:
            continue
        return None if len(output) > limit else output
    return b""  # not compressed data after all: an unparseable body


_NOT_JSON = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@sensitive_variables()
def _load_json(body: bytes) -> Any:
    """The JSON value of ``body``, or ``_NOT_JSON`` (bad syntax or encoding, NaN, nesting)."""
    if not body:
        return _NOT_JSON
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _NOT_JSON


@sensitive_variables()
def _parse_success(
    headers: Any,
    body: bytes,
    snapshot: CredentialSnapshot,
    secret: str,
    context: _Context,
    started: float,
) -> AccessToken | TokenRequestError:
    def malformed(reason: str) -> MalformedTokenResponseError:
        return MalformedTokenResponseError(
            f"Token endpoint answered 200 but {reason}.",
            status=200,
            trace_id=_header_text(headers, TRACE_HEADER, secret),
            **context,
        )

    data = _load_json(body)
    if data is _NOT_JSON:
        return malformed(f"not with JSON ({_content_type(headers, secret)})")
    if not isinstance(data, dict):
        return malformed("the JSON is not an object")
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        return malformed("without a non-empty access_token")
    if len(value) > MAX_TOKEN_LENGTH:
        return malformed(f"with an access_token longer than {MAX_TOKEN_LENGTH} characters")
    if not is_valid_token_value(value):
        return malformed(
            "with an access_token that is not a valid bearer token (RFC 6750: letters, "
            "digits and -._~+/ then optional = padding)"
        )
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        return malformed(f"with token_type {_quoted(token_type, secret)} instead of Bearer")
    expires_in = _expires_in(data.get("expires_in"))
    if expires_in is None:
        return malformed(
            f"with expires_in {_quoted(data.get('expires_in'), secret)} (a positive whole "
            "number of seconds is required)"
        )
    expires_at = started + expires_in
    exp_claim = jwt_expiry(value)
    if exp_claim is not None:
        expires_at = min(expires_at, exp_claim)
    if expires_at <= clock.now():
        return malformed("with a token that has already expired")
    granted = _granted_scopes(data.get("scope"))
    if not granted:
        granted = list(snapshot.scopes)  # RFC 6749 5.1: omitted scope means as requested
    missing = [s for s in snapshot.scopes if s not in granted]
    if missing:
        logger.warning(
            "getpaid granted tenant=%s environment=%s fewer scopes than requested; missing: %s",
            snapshot.tenant_label,
            snapshot.environment,
            " ".join(missing),
        )
    return AccessToken(
        value=value,
        token_type="Bearer",
        expires_at=from_timestamp(expires_at),
        scopes=frozenset(granted),
        obtained_at=from_timestamp(started),
    )


def _expires_in(value: Any) -> int | None:
    """Seconds from a JSON integer or digit string; None unless positive. Capped at a year."""
    if isinstance(value, str):
        value = int(value) if _DIGITS.fullmatch(value) else None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    return min(value, MAX_EXPIRES_IN)


def _granted_scopes(value: Any) -> list[str]:
    """The scopes the server granted; tokens that are not RFC 6749 scope-tokens are dropped."""
    if not isinstance(value, str):
        return []
    return [s for s in split_scopes(value) if _SCOPE_TOKEN.fullmatch(s)][:_MAX_SCOPES]


def _content_type(headers: Any, secret: str) -> str:
    value = headers.get("Content-Type") or "no content type"
    return _scrub(value.split(";")[0], secret, 60)


def _header_text(headers: Any, name: str, secret: str) -> str:
    return _scrub(headers.get(name) or "", secret, MAX_HEADER_TEXT)


@sensitive_variables()
def _quoted(value: Any, secret: str, limit: int = 20) -> str:
    """A server-supplied value for a message: scrubbed, printable, short, quoted."""
    if value is None or isinstance(value, (bool, int, float)):
        text = _number_text(value)
    elif isinstance(value, str):
        text = value
    else:
        return f"<a JSON {'object' if isinstance(value, dict) else 'array'}>"
    return repr(_scrub(text, secret, limit))


def _number_text(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"<a {len(str(abs(value)))}-digit number>"
    return json.dumps(value)


def _text(value: Any) -> str:
    """A JSON scalar as text for error fields; objects and arrays are ignored."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (dict, list)):
        return ""
    return _number_text(value)


@sensitive_variables()
def _secret_forms(secret: str) -> list[str]:
    """The secret as a server might echo it: raw, JSON-escaped, URL-encoded, normalised."""
    if not secret:
        return []
    plain = str(secret)
    forms = {
        plain,
        json.dumps(plain)[1:-1],
        json.dumps(plain, ensure_ascii=False)[1:-1],
        quote(plain, safe=""),
        quote(plain),
        quote_plus(plain),
        " ".join(plain.split()),
        printable(plain),
        html.escape(plain),
        html.escape(plain, quote=False),
    }
    return sorted((form for form in forms if form), key=len, reverse=True)


@sensitive_variables()
def _scrub(text: Any, secret: str, limit: int = MAX_DESCRIPTION) -> str:
    """Server text made safe to show: secret masked first, then one printable line, cut.

    The secret (any length) is replaced in the raw text before
    whitespace is collapsed, control characters escaped and the text truncated, so none
    of those steps can hide it from the replacement; the forms are replaced again after.
    """
    text = str(text)
    forms = _secret_forms(secret)
    text = _mask(text, forms)
    text = printable(text)
    text = _mask(text, forms)
    return text[:limit]


@sensitive_variables()
def _mask(text: str, forms: list[str]) -> str:
    # Every occurrence, whatever the secret's length: a short secret garbles the message
    # (every "s" of a one-letter secret "s" becomes ***), which is better than a leak.
    for form in forms:  # _secret_forms drops empty forms
        text = text.replace(form, "***")
    return text


@sensitive_variables()
def _error_for(
    status: int,
    headers: Any,
    body: bytes,
    snapshot: CredentialSnapshot,
    context: _Context,
    secret: str,
) -> TokenRequestError:
    error = description = raw_error = raw_description = ""
    data = _load_json(body)
    if isinstance(data, dict):
        raw_error = _text(data.get("error", ""))
        raw_description = _text(data.get("error_description", data.get("message", "")))
        error = _scrub(raw_error, secret, MAX_ERROR)
        description = _scrub(raw_description, secret, MAX_DESCRIPTION)
    fields: dict[str, Any] = {
        **context,
        "status": status,
        "error": error,
        "error_description": description,
        "trace_id": _header_text(headers, TRACE_HEADER, secret),
    }
    # Classify on what the server said; report the scrubbed version.
    lowered = raw_description.lower()
    if status == 429:
        retry_after, quota_text = rate_limit_wait(headers)
        return RateLimitedError(
            "getpaid's token endpoint is rate limiting this client.",
            retry_after=DEFAULT_RETRY_AFTER if retry_after is None else retry_after,
            quota=_scrub(quota_text, secret, MAX_HEADER_TEXT),
            **fields,
        )
    if status >= 500:
        what = "an HTML error page" if "html" in _content_type(headers, secret) else "an error"
        return TokenEndpointUnavailableError(
            f"Token endpoint answered {status} with {what}.", **fields
        )
    if raw_error == "unauthorized_client" or "grant type" in lowered:
        return UnauthorizedClientError(
            "This client may not use the client_credentials grant.", **fields
        )
    if raw_error == "invalid_scope" or "granted scope" in lowered:
        return InvalidScopeError("A requested scope was refused.", **fields)
    if "service not enabled" in lowered:
        return AudienceNotEnabledError(
            f"The client is not enabled for audience {snapshot.audience}.", **fields
        )
    if (
        "client-grant" in lowered
        or "client grant" in lowered
        or "not authorized to access" in lowered
    ):
        return ClientGrantMissingError("The client has no grant for this API.", **fields)
    if status in (401, 403) or raw_error in ("invalid_client", "access_denied"):
        return InvalidClientError("getpaid rejected the client credentials.", **fields)
    if data is _NOT_JSON:
        return TokenRequestError(
            f"Token endpoint answered {status} with {_content_type(headers, secret)}, not JSON.",
            **fields,
        )
    return TokenRequestError(f"Token endpoint refused the request ({status}).", **fields)


# --- rate limits -----------------------------------------------------------------------


def _header(headers: Any, name: str) -> str:
    value = headers.get(name)
    return value.strip()[:MAX_HEADER_TEXT] if isinstance(value, str) else ""


def rate_limit_wait(headers: Any) -> tuple[float | None, str]:
    """Seconds to wait after a 429, from Retry-After, x-ratelimit-reset or Auth0's quota header.

    Only ASCII numbers and valid HTTP dates are understood; anything else is ignored
    (``None`` when nothing usable was sent). The wait is within [0, MAX_WAIT]. The quota
    header comes back as printable text of at most MAX_HEADER_TEXT characters.
    """
    quota_text = _header(headers, quota.QUOTA_HEADERS[0]) or _header(
        headers, quota.QUOTA_HEADERS[1]
    )
    waits: list[float] = []
    retry_after = api_rules.retry_after_seconds(_header(headers, "Retry-After"), time.time())
    if retry_after is not None:
        waits.append(retry_after)
    reset = _header(headers, "x-ratelimit-reset")
    if _DIGITS.fullmatch(reset):
        waits.append(api_rules.clamp_wait(quota.reset_in(int(reset), time.time())))
    if quota_text and not waits:
        now = time.time()
        buckets = quota.parse_quota_header(quota_text, now)
        exhausted = [b for b in buckets if b.remaining == 0] or list(buckets[:1])
        if exhausted:
            waits.append(api_rules.clamp_wait(max(b.resets_at for b in exhausted) - now))
    return (max(waits) if waits else None), printable(quota_text)
