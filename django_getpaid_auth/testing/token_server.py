"""A fake of getpaid's OAuth token endpoint (Auth0): clients, tokens and fault injection.

Why a module of its own: the token endpoint is the part of getpaid the package talks
to most, and tests of token fetching need nothing else. It answers ``POST
/oauth/token`` the way Auth0 does (form or JSON bodies, HTTP Basic, error bodies,
``no-store`` headers), signs HS256 tokens with a per-instance key, can count tokens
against Auth0's per-client quota and requests against a rate limit (with their
headers, see :mod:`._limits`), and can be told to fail the next requests in the ways
real servers do (:data:`FAULT_KINDS`). :class:`FakeTokenServer` runs alone; ``FakeGetpaid`` adds the
API emulation on top of it.

Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from django_getpaid_auth.testing._http import FaultQueue, Handler, LoopbackServer, ReplyError
from django_getpaid_auth.testing._limits import (
    QUOTA_BUCKETS,
    HeaderPairs,
    TokenLimits,
    validate_headers,
)
from django_getpaid_auth.testing.jwt import InvalidTokenError, decode_jwt, make_jwt

__all__ = [
    "ENVIRONMENT_AUDIENCES",
    "FAULT_KINDS",
    "KNOWN_SCOPES",
    "LIVE_AUDIENCE",
    "QUOTA_BUCKETS",
    "SANDBOX_AUDIENCE",
    "TOKEN_PATH",
    "FakeClient",
    "FakeTokenServer",
    "is_token_path",
]

LIVE_AUDIENCE = "https://api.getpaid.io"
SANDBOX_AUDIENCE = "https://api.sandbox.getpaid.io"
KNOWN_SCOPES: tuple[str, ...] = (
    "accounts:read",
    "accounts:read_write",
    "payments:read",
    "payments:read_write",
)
#: Audience required by each API path prefix.
ENVIRONMENT_AUDIENCES: dict[str, str] = {"live": LIVE_AUDIENCE, "sandbox": SANDBOX_AUDIENCE}
#: Fault kinds accepted by :meth:`FakeTokenServer.fail_next_token_requests` (and, for
#: those in ``api.API_FAULT_KINDS``, by ``FakeGetpaid.fail_next_api_requests``).
FAULT_KINDS: tuple[str, ...] = (
    "500",
    "502_html",
    "503",
    "429",
    "quota_429",
    "malformed_json",
    "missing_fields",
    "negative_expires",
    "reset",
    "timeout",
    "commit_then_reset",
)
#: Path of the token endpoint (Auth0's ``/oauth/token``).
TOKEN_PATH = "/oauth/token"
# Grant types Auth0 knows (from the tenant's discovery document); anything else is
# "unsupported", anything in here but not enabled for the client is "unauthorized".
_KNOWN_GRANT_TYPES = frozenset(
    {
        "client_credentials",
        "authorization_code",
        "refresh_token",
        "password",
        "implicit",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "http://auth0.com/oauth/grant-type/password-realm",
        "http://auth0.com/oauth/grant-type/passwordless/otp",
        "http://auth0.com/oauth/grant-type/mfa-oob",
        "http://auth0.com/oauth/grant-type/mfa-otp",
        "http://auth0.com/oauth/grant-type/mfa-recovery-code",
    }
)
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(value)


@dataclass(frozen=True)
class FakeClient:
    """Credentials and permissions of one OAuth client registered on a :class:`FakeTokenServer`."""

    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = KNOWN_SCOPES
    audiences: tuple[str, ...] = (LIVE_AUDIENCE, SANDBOX_AUDIENCE)
    grant_types: tuple[str, ...] = ("client_credentials",)


class FakeTokenServer(LoopbackServer):
    """Threaded HTTP server faking ``https://auth.getpaid.io/oauth/token``.

    Use as a context manager (or ``start()``/``stop()``); register clients, inject
    faults with :meth:`fail_next_token_requests`, and inspect the counters. Tokens it
    issues are checked with :meth:`verify_token`. Paths other than :data:`TOKEN_PATH`
    answer 404.

    Without ``token_quota``, ``token_rate_limit`` or ``token_response_headers``, token
    answers carry no quota or rate-limit headers. With them, every answer it computes
    (not a queued fault) reports the figures, and ``enforce_token_limits`` decides
    whether a used-up quota or limit gets a 429.
    """

    fault_timeout_sleep: float = 5.0

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_lifetime: int = 3600,
        token_latency: float = 0.0,
        token_quota: Mapping[str, int] | None = None,
        token_rate_limit: int | None = None,
        token_rate_limit_window: int = 60,
        token_response_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        enforce_token_limits: bool = True,
    ) -> None:
        super().__init__(host, port)
        self._limits = TokenLimits()
        self._limits.enforce = enforce_token_limits
        if token_quota is not None:
            self._limits.set_quota(token_quota)
        if token_rate_limit is not None:
            self._limits.set_rate_limit(token_rate_limit, token_rate_limit_window)
        self._extra_headers: HeaderPairs = ()
        if token_response_headers is not None:
            self.set_token_response_headers(token_response_headers)
        self.token_lifetime = token_lifetime
        self.token_latency = token_latency
        #: Like Auth0's tenant setting: used when a token request has no audience.
        self.default_audience: str | None = None
        self.fault_timeout_sleep = type(self).fault_timeout_sleep
        self.token_requests: list[dict[str, Any]] = []
        self._received: list[str | None] = []
        self._key = secrets.token_bytes(32)
        self._kid = secrets.token_hex(8)
        self._clients: dict[str, FakeClient] = {}
        self._issued_jtis: set[str] = set()
        self._revoked_jtis: set[str] = set()
        self._faults = FaultQueue(FAULT_KINDS, "fault kind")

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<{type(self).__name__} {where} clients={len(self._clients)}>"

    @property
    def token_url(self) -> str:
        """The fake ``https://auth.getpaid.io/oauth/token``."""
        return self.url + TOKEN_PATH

    @property
    def issuer(self) -> str:
        """Value of the ``iss`` claim (Auth0 style, trailing slash)."""
        return self.url + "/"

    # ------------------------------------------------------------------ clients
    def register_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        scopes: str | Iterable[str] = KNOWN_SCOPES,
        audiences: str | Iterable[str] = (LIVE_AUDIENCE, SANDBOX_AUDIENCE),
        grant_types: str | Iterable[str] = ("client_credentials",),
    ) -> FakeClient:
        """Create (or replace) a client that may fetch tokens."""
        client = FakeClient(
            client_id=client_id,
            client_secret=client_secret,
            scopes=_as_tuple(scopes),
            audiences=_as_tuple(audiences),
            grant_types=_as_tuple(grant_types),
        )
        with self._lock:
            self._clients[client_id] = client
        return client

    @property
    def clients(self) -> dict[str, FakeClient]:
        """Snapshot of registered clients by id."""
        with self._lock:
            return dict(self._clients)

    # ------------------------------------------------------------------ tokens
    def issue_token(
        self,
        client_id: str,
        audience: str,
        scope: str | Iterable[str] = "",
        *,
        lifetime: int | None = None,
    ) -> str:
        """Mint a token the API accepts, without going through HTTP (handy in tests)."""
        return self._mint(client_id, audience, " ".join(_as_tuple(scope)), lifetime)

    def _mint(self, client_id: str, audience: str, scope: str, lifetime: int | None) -> str:
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims = {
            "iss": self.issuer,
            "sub": f"{client_id}@clients",
            "aud": audience,
            "iat": now,
            "exp": now + (self.token_lifetime if lifetime is None else lifetime),
            "scope": scope,
            "gty": "client-credentials",
            "azp": client_id,
            "jti": jti,
        }
        with self._lock:
            self._issued_jtis.add(jti)
        return make_jwt(claims, self._key, kid=self._kid)

    def revoke_tokens(self) -> None:
        """Make every token issued so far fail with 401; tokens issued later still work."""
        with self._lock:
            self._revoked_jtis |= self._issued_jtis
            self._issued_jtis = set()

    def read_token(self, token: str) -> dict[str, Any]:
        """Claims of a token signed by this server, expired or revoked or not.

        Raises :class:`~django_getpaid_auth.testing.jwt.InvalidTokenError` when the
        token is malformed or not signed with this server's key.
        """
        return decode_jwt(token, self._key)[1]

    def verify_token(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid (signed, unexpired, unrevoked) token or raise ValueError."""
        _header, claims = decode_jwt(token, self._key)
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or time.time() >= exp:
            raise InvalidTokenError("The access token expired")
        with self._lock:
            if claims.get("jti") in self._revoked_jtis:
                raise InvalidTokenError("The access token has been revoked")
        return claims

    # ------------------------------------------------------------------ faults and counters
    def fail_next_token_requests(
        self, kind: str, count: int = 1, *, retry_after: int | None = None
    ) -> None:
        """Queue ``count`` faults of ``kind`` for the next POSTs to /oauth/token (FIFO)."""
        self._faults.add(kind, count, retry_after)

    def clear_faults(self) -> None:
        """Drop faults that have not been served yet."""
        self._faults.clear()

    def token_request_count(self, client_id: str | None = None) -> int:
        """Requests to /oauth/token (successful and failed), total or per client_id as sent."""
        with self._lock:
            if client_id is None:
                return len(self.token_requests)
            return sum(1 for r in self.token_requests if r["client_id"] == client_id)

    def token_requests_received(self, client_id: str | None = None) -> int:
        """Token requests that have arrived, answered or still in progress (e.g. sleeping)."""
        with self._lock:
            return sum(1 for c in self._received if client_id is None or c == client_id)

    def reset_counters(self) -> None:
        """Forget logged token requests (not clients or faults)."""
        with self._lock:
            self.token_requests.clear()
            self._received.clear()

    # ------------------------------------------------------------------ quota and rate limit
    @property
    def enforce_token_limits(self) -> bool:
        """Whether a used-up quota or rate limit gets a 429 (else the token is issued
        anyway and the headers say ``r=0`` / ``x-ratelimit-remaining: 0``)."""
        return self._limits.enforce

    @enforce_token_limits.setter
    def enforce_token_limits(self, enforce: bool) -> None:
        self._limits.enforce = bool(enforce)

    @property
    def token_limits_clock(self) -> Callable[[], float]:
        """Time source (epoch seconds) of the quota and rate-limit windows.

        Defaults to ``time.time``; set a fixed or stepping clock for exact ``t``,
        ``x-ratelimit-reset`` and ``Retry-After`` values, or to move past a window.
        Token ``iat``/``exp`` keep using the real time.
        """
        return self._limits.clock

    @token_limits_clock.setter
    def token_limits_clock(self, clock: Callable[[], float]) -> None:
        self._limits.clock = clock

    def set_token_quota(self, quota: Mapping[str, int], *, client_id: str | None = None) -> None:
        """Set Auth0's token quota, e.g. ``{"per_hour": 10, "per_day": 100}``.

        With ``client_id``, for that client only; without, for every client that has
        no quota of its own. An empty mapping means no quota (to exempt one client).
        Buckets are :data:`QUOTA_BUCKETS`. Counts already made are kept.
        """
        self._limits.set_quota(quota, client_id)

    def clear_token_quota(self, *, client_id: str | None = None) -> None:
        """Remove one client's own quota (the default applies again), or every quota."""
        self._limits.clear_quota(client_id)

    def token_quota(self, client_id: str) -> dict[str, int]:
        """The quota that applies to ``client_id`` (``{}`` when none)."""
        return self._limits.quota_for(client_id)

    def reset_token_quota(self, client_id: str | None = None) -> None:
        """Forget issued-token counts, one client's or all: as if new windows had begun."""
        self._limits.reset_quota(client_id)

    def token_quota_usage(self, client_id: str) -> dict[str, int]:
        """Tokens issued over HTTP to ``client_id`` in the current window of each bucket.

        Counted whether a quota is set or not; refused (429) requests do not count.
        """
        return self._limits.quota_usage(client_id)

    def set_token_rate_limit(self, limit: int, *, window: int = 60) -> None:
        """Allow ``limit`` token requests per ``window`` seconds, all clients together.

        Every token request the fake answers itself (not a queued fault) counts and
        gets ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset``.
        """
        self._limits.set_rate_limit(limit, window)

    def clear_token_rate_limit(self) -> None:
        """No rate limit and no ``x-ratelimit-*`` headers any more."""
        self._limits.clear_rate_limit()

    def reset_token_rate_limit(self) -> None:
        """Forget the requests counted in the current rate-limit window."""
        self._limits.reset_rate_limit()

    def token_rate_limit_usage(self) -> int:
        """Token requests counted in the current rate-limit window."""
        return self._limits.rate_limit_usage()

    def set_token_response_headers(
        self, headers: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> None:
        """Add these headers, verbatim, to every token answer (faults included).

        For parser robustness tests: they replace headers of the same name the fake
        would send (e.g. a malformed ``Auth0-Client-Quota-Limit``); ``(name, value)``
        pairs may repeat a name to send a header twice.
        """
        pairs = validate_headers(headers)
        with self._lock:
            self._extra_headers = pairs

    def clear_token_response_headers(self) -> None:
        """Stop adding extra headers to token answers."""
        with self._lock:
            self._extra_headers = ()

    # ------------------------------------------------------------------ HTTP
    def _route(self, handler: Handler, path: str, body: bytes) -> None:
        if is_token_path(path):
            self._handle_token(handler, body)
        else:
            handler.send(404, _oauth_error("not_found", f"No route for {path}"))

    def _send_token(
        self,
        handler: Handler,
        status: int,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Send a token answer with the extra headers, which replace same-named ones."""
        with self._lock:
            extra = self._extra_headers
        replaced = {name.lower() for name, _ in extra}
        pairs = [(k, v) for k, v in (headers or {}).items() if k.lower() not in replaced]
        handler.send(status, body, content_type=content_type, headers=[*pairs, *extra])

    # ------------------------------------------------------------------ /oauth/token
    def _handle_token(self, handler: Handler, body: bytes) -> None:
        params, auth_client_id, auth_secret, parse_error = _parse_token_request(handler, body)
        client_id = auth_client_id if auth_client_id is not None else params.get("client_id")
        entry: dict[str, Any] = {
            "client_id": client_id if isinstance(client_id, str) else None,
            "audience": params.get("audience"),
            "scope": params.get("scope"),
            "status": None,
            "error": None,
            "time": time.time(),
        }
        with self._lock:
            self._received.append(entry["client_id"])
        if handler.command != "POST":
            self._log_token(entry, 405, "invalid_request")
            self._send_token(
                handler,
                405,
                {"error": "invalid_request", "error_description": "Method not allowed"},
                headers={"Allow": "POST"},
            )
            return
        self._sleep(self.token_latency)
        fault = self._faults.next()
        if fault is not None:
            credentials = (None, None) if parse_error else (auth_client_id, auth_secret)
            self._serve_fault(handler, entry, params, *fault, credentials=credentials)
            return
        # Auth0 counts every request against its rate limit, valid or not.
        rate = self._limits.admit_request()
        try:
            if rate.retry_after is not None:
                raise ReplyError(
                    429,
                    _oauth_error("too_many_requests", "Global limit has been reached"),
                    headers={"Retry-After": str(rate.retry_after)},
                )
            if parse_error:
                raise ReplyError(400, _oauth_error("invalid_request", parse_error))
            status, payload, headers = self._token_response(params, auth_client_id, auth_secret)
        except ReplyError as reply:
            error = reply.body.get("error") if isinstance(reply.body, dict) else None
            self._log_token(entry, reply.status, error)
            reply_headers = _no_store({**rate.headers, **reply.headers})
            self._send_token(handler, reply.status, reply.body, headers=reply_headers)
            return
        self._log_token(entry, status, None)
        self._send_token(handler, status, payload, headers=_no_store({**rate.headers, **headers}))

    def _log_token(self, entry: dict[str, Any], status: int | None, error: str | None) -> None:
        entry["status"] = status
        entry["error"] = error
        with self._lock:
            self.token_requests.append(entry)

    def _token_response(
        self,
        params: dict[str, Any],
        auth_client_id: str | None,
        auth_secret: str | None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body, headers) of a token request that passed its checks, or ReplyError."""
        for name in ("grant_type", "client_id", "client_secret", "audience", "scope"):
            value = params.get(name)
            if value is not None and not isinstance(value, str):
                raise ReplyError(
                    400, _oauth_error("invalid_request", f"Invalid parameter type: {name}")
                )
        grant_type = params.get("grant_type")
        if not grant_type:
            raise ReplyError(
                400, _oauth_error("invalid_request", "Missing required parameter: grant_type")
            )
        if grant_type not in _KNOWN_GRANT_TYPES:
            raise ReplyError(
                400,
                _oauth_error("unsupported_grant_type", f"Unsupported grant type: {grant_type}"),
            )
        client_id: str | None
        secret: str | None
        if auth_client_id is not None:
            body_id = params.get("client_id")
            if body_id is not None and body_id != auth_client_id:
                raise ReplyError(
                    400,
                    _oauth_error(
                        "invalid_request",
                        "client_id in the body does not match the Authorization header",
                    ),
                )
            client_id, secret = auth_client_id, auth_secret
        else:
            client_id, secret = params.get("client_id"), params.get("client_secret")
        if not client_id:
            raise ReplyError(
                400, _oauth_error("invalid_request", "Missing required parameter: client_id")
            )
        if secret is None or secret == "":
            raise ReplyError(
                400, _oauth_error("invalid_request", "Missing required parameter: client_secret")
            )
        with self._lock:
            client = self._clients.get(client_id)
        if client is None or not hmac.compare_digest(
            client.client_secret.encode("utf-8"), secret.encode("utf-8")
        ):
            raise ReplyError(401, _oauth_error("access_denied", "Unauthorized"))
        if grant_type not in client.grant_types:
            raise ReplyError(
                403,
                _oauth_error(
                    "unauthorized_client",
                    f"Grant type '{grant_type}' not allowed for the client.",
                ),
            )
        # Auth0's tenant "Default Audience" applies when a request names none.
        audience = params.get("audience") or self.default_audience
        if not audience:
            raise ReplyError(
                400, _oauth_error("invalid_request", "Missing required parameter: audience")
            )
        if audience not in ENVIRONMENT_AUDIENCES.values() or audience not in client.audiences:
            raise ReplyError(
                403,
                _oauth_error("access_denied", f"Service not enabled within domain: {audience}"),
            )
        requested = list(dict.fromkeys((params.get("scope") or "").split()))
        if requested:
            missing = [s for s in requested if s not in client.scopes]
            if missing:
                raise ReplyError(
                    403,
                    _oauth_error(
                        "access_denied",
                        f"Client has not been granted scopes: {' '.join(missing)}",
                    ),
                )
            granted = " ".join(requested)
        else:
            granted = " ".join(client.scopes)
        quota = self._limits.admit_token(client_id)
        if quota.retry_after is not None:
            raise ReplyError(
                429,
                _oauth_error("too_many_requests", "Quota exceeded"),
                headers={**quota.headers, "Retry-After": str(quota.retry_after)},
            )
        lifetime = int(self.token_lifetime)
        token = self._mint(client_id, audience, granted, lifetime)
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": granted,
        }
        return 200, body, quota.headers

    def _serve_fault(
        self,
        handler: Handler,
        entry: dict[str, Any],
        params: dict[str, Any],
        kind: str,
        retry_after: int | None,
        *,
        credentials: tuple[str | None, str | None] = (None, None),
    ) -> None:
        entry["fault"] = kind
        extra: dict[str, str] = {}
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        if kind == "reset":
            self._log_token(entry, None, "connection_reset")
            handler.reset_connection()
            return
        if kind == "commit_then_reset":
            # The request is handled (a token is issued) but its answer never leaves.
            try:
                entry["committed_status"] = self._token_response(params, *credentials)[0]
            except ReplyError as reply:
                entry["committed_status"] = reply.status
            self._log_token(entry, None, "connection_reset")
            handler.reset_connection()
            return
        if kind == "timeout":
            self._sleep(self.fault_timeout_sleep)
            kind = "500"
        body: dict[str, Any]
        if kind == "500":
            body = _oauth_error("server_error", "An unexpected error occurred")
            self._log_token(entry, 500, "server_error")
            self._send_token(handler, 500, body, headers=_no_store(extra))
        elif kind == "502_html":
            self._log_token(entry, 502, "bad_gateway")
            self._send_token(
                handler,
                502,
                _BAD_GATEWAY_HTML,
                content_type="text/html; charset=utf-8",
                headers=extra,
            )
        elif kind == "503":
            body = _oauth_error("temporarily_unavailable", "Service Unavailable")
            self._log_token(entry, 503, "temporarily_unavailable")
            self._send_token(handler, 503, body, headers=_no_store(extra))
        elif kind == "429":
            wait = 2 if retry_after is None else retry_after
            headers = {
                "Retry-After": str(wait),
                "x-ratelimit-limit": "30",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(int(time.time()) + wait),
            }
            body = _oauth_error("too_many_requests", "Global limit has been reached")
            self._log_token(entry, 429, "too_many_requests")
            self._send_token(handler, 429, body, headers=_no_store(headers))
        elif kind == "quota_429":
            wait = 3540 if retry_after is None else retry_after
            headers = {
                "Retry-After": str(wait),
                "Auth0-Client-Quota-Limit": f"b=per_hour;q=10;r=0;t={wait}",
            }
            body = _oauth_error("too_many_requests", "Quota exceeded")
            self._log_token(entry, 429, "too_many_requests")
            self._send_token(handler, 429, body, headers=_no_store(headers))
        elif kind == "malformed_json":
            self._log_token(entry, 200, "malformed_json")
            self._send_token(handler, 200, b'{"access_token": "eyJ', headers=_no_store())
        elif kind == "missing_fields":
            self._log_token(entry, 200, "missing_fields")
            body = {"token_type": "Bearer", "expires_in": int(self.token_lifetime)}
            self._send_token(handler, 200, body, headers=_no_store())
        elif kind == "negative_expires":
            client_id = entry["client_id"] or "unknown"
            audience = params.get("audience") if isinstance(params.get("audience"), str) else ""
            scope = params.get("scope") if isinstance(params.get("scope"), str) else ""
            token = self._mint(client_id, audience or LIVE_AUDIENCE, scope or "", -5)
            self._log_token(entry, 200, "negative_expires")
            body = {"access_token": token, "token_type": "Bearer", "expires_in": -5}
            body["scope"] = scope or ""
            self._send_token(handler, 200, body, headers=_no_store())
        else:  # pragma: no cover - guarded by fail_next_token_requests
            raise AssertionError(kind)


def is_token_path(path: str) -> bool:
    """Whether a request path (without query string) addresses the token endpoint."""
    return path.rstrip("/") == TOKEN_PATH


def _oauth_error(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


def _no_store(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    headers.update(extra or {})
    return headers


def _parse_token_request(
    handler: Handler, body: bytes
) -> tuple[dict[str, Any], str | None, str | None, str | None]:
    """Return (params, basic_client_id, basic_secret, parse_error) for a token request."""
    params: dict[str, Any] = {}
    error: str | None = None
    content_type = handler.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if body.strip():
        if content_type == "application/x-www-form-urlencoded":
            try:
                parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
                params = {k: v[0] if len(v) == 1 else v for k, v in parsed.items()}
            except (ValueError, UnicodeDecodeError):
                error = "Invalid form body"
        elif content_type == "application/json" or content_type.endswith("+json"):
            try:
                loaded = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                error = "Invalid JSON body"
            else:
                if isinstance(loaded, dict):
                    params = loaded
                else:
                    error = "The request body must be a JSON object"
        else:
            error = (
                "Unsupported Content-Type; use application/json or "
                "application/x-www-form-urlencoded"
            )
    basic_id: str | None = None
    basic_secret: str | None = None
    scheme, _, credentials = handler.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic" and credentials.strip():
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                raise ValueError("no colon")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            error = error or "Malformed HTTP Basic Authorization header"
        else:
            # RFC 6749 2.3.1: both parts are form-urlencoded before base64.
            basic_id, basic_secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    return params, basic_id, basic_secret, error
