"""A local, in-process stand-in for getpaid's OAuth server and (part of) its API.

Why: the package's tests, its users' tests and the demo must exercise the real
HTTP path (token fetch, caching, 401 refresh, retries on 429/5xx, connection
errors) without touching the internet. The fake mimics Auth0's token endpoint
(error bodies, rate-limit headers) and getpaid's RFC 7807 API errors closely
enough that code passing against it behaves against the real thing.

Standard library only, so it can be imported without Django or any test tool.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hmac
import json
import re
import secrets
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

from django_getpaid_auth.testing.jwt import InvalidTokenError, decode_jwt, make_jwt

__all__ = [
    "FAULT_KINDS",
    "KNOWN_SCOPES",
    "LIVE_AUDIENCE",
    "SANDBOX_AUDIENCE",
    "FakeClient",
    "FakeGetpaid",
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
#: Fault kinds accepted by :meth:`FakeGetpaid.fail_next_token_requests`.
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
)
PROBLEM_TYPE_BASE = "https://docs.getpaid.io/ref/error-types"
PAYMENT_READ_SCOPES = ("payments:read", "payments:read_write")
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
_IDEMPOTENCY_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]{10,100}$")
_PAYMENT_STATUSES = (
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
_SORT_FIELDS = ("created_at", "amount", "seller_legal_name")
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def _iso(ts: float) -> str:
    """Format like getpaid's DateTime: UTC, milliseconds, trailing Z (24 chars)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(value)


@dataclass(frozen=True)
class FakeClient:
    """Credentials and permissions of one OAuth client registered on a :class:`FakeGetpaid`."""

    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = KNOWN_SCOPES
    audiences: tuple[str, ...] = (LIVE_AUDIENCE, SANDBOX_AUDIENCE)
    grant_types: tuple[str, ...] = ("client_credentials",)


class _ReplyError(Exception):
    """Internal: abort request handling with a ready-made response."""

    def __init__(
        self,
        status: int,
        body: Any,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True
    fake: FakeGetpaid

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (or our own stop() closing its socket) is routine here.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeGetpaid/1.0"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK adds ~40 ms to every keep-alive response on loopback.
    disable_nagle_algorithm = True
    timeout = 60  # idle keep-alive connections do not pin a thread forever
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr logging."""

    def setup(self) -> None:
        super().setup()
        self.server.fake._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track_connection(self.connection, add=False)

    # Every method goes through one dispatcher so unknown methods get proper 405s.
    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        fake = self.server.fake
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send(400, {"error": "invalid_request", "error_description": "Bad body"})
            return
        path = urlsplit(self.path).path
        try:
            if path.rstrip("/") == "/oauth/token":
                fake._handle_token(self, body)
            else:
                fake._handle_api(self, path, body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _send(
        self,
        status: int,
        body: Any,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(body, bytes):
            payload = body
        elif isinstance(body, str):
            payload = body.encode("utf-8")
        else:
            payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _reset_connection(self) -> None:
        """Drop the TCP connection with an RST and no HTTP response at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


class FakeGetpaid:
    """Threaded HTTP server faking ``auth.getpaid.io`` and ``api[.sandbox].getpaid.io``.

    Use as a context manager (or ``start()``/``stop()``); register clients, point the
    package at :meth:`getpaid_auth_settings`, inject faults, and inspect counters.
    """

    fault_timeout_sleep: float = 5.0

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_lifetime: int = 3600,
        token_latency: float = 0.0,
        api_latency: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.token_lifetime = token_lifetime
        self.token_latency = token_latency
        self.api_latency = api_latency
        #: Like Auth0's tenant setting: used when a token request has no audience.
        self.default_audience: str | None = None
        self.fault_timeout_sleep = type(self).fault_timeout_sleep
        self.token_requests: list[dict[str, Any]] = []
        self.api_requests: list[dict[str, Any]] = []
        self._received: list[str | None] = []
        self._key = secrets.token_bytes(32)
        self._kid = secrets.token_hex(8)
        self._lock = threading.RLock()
        self._clients: dict[str, FakeClient] = {}
        self._payments: dict[str, dict[str, dict[str, Any]]] = {}
        self._issued_jtis: set[str] = set()
        self._revoked_jtis: set[str] = set()
        self._faults: deque[tuple[str, int | None]] = deque()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeGetpaid:
        """Bind and serve in a daemon thread; returns ``self`` for chaining."""
        if self._server is not None:
            raise RuntimeError("FakeGetpaid is already running")
        server_cls = _Server6 if ":" in self.host else _Server
        server = server_cls((self.host, self.port), _Handler)
        server.fake = self
        self._stopping.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeGetpaid-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and drop open keep-alive connections."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency / timeout faults
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeGetpaid:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"<FakeGetpaid {where} clients={len(self._clients)}>"

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (only valid while running)."""
        if self._server is None:
            raise RuntimeError("FakeGetpaid is not running; call start() first")
        host, port = self._server.server_address[:2]
        if ":" in str(host):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def token_url(self) -> str:
        """The fake ``https://auth.getpaid.io/oauth/token``."""
        return self.url + "/oauth/token"

    @property
    def issuer(self) -> str:
        """Value of the ``iss`` claim (Auth0 style, trailing slash)."""
        return self.url + "/"

    def api_url(self, environment: str) -> str:
        """Base URL standing in for the live or sandbox API host."""
        if environment not in ENVIRONMENT_AUDIENCES:
            raise ValueError(f"unknown environment {environment!r}; use 'live' or 'sandbox'")
        return f"{self.url}/{environment}"

    def getpaid_auth_settings(self) -> dict[str, Any]:
        """Fragment to merge into Django's ``GETPAID_AUTH`` setting to target this fake."""
        return {
            "TOKEN_URL": self.token_url,
            "ENVIRONMENTS": {
                env: {"AUDIENCE": audience, "API_URL": self.api_url(env)}
                for env, audience in ENVIRONMENT_AUDIENCES.items()
            },
        }

    # ------------------------------------------------------------------ clients and data
    def register_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        scopes: str | Iterable[str] = KNOWN_SCOPES,
        audiences: str | Iterable[str] = (LIVE_AUDIENCE, SANDBOX_AUDIENCE),
        grant_types: str | Iterable[str] = ("client_credentials",),
    ) -> FakeClient:
        """Create (or replace) a client; new clients get three deterministic demo payments."""
        client = FakeClient(
            client_id=client_id,
            client_secret=client_secret,
            scopes=_as_tuple(scopes),
            audiences=_as_tuple(audiences),
            grant_types=_as_tuple(grant_types),
        )
        with self._lock:
            self._clients[client_id] = client
            if client_id not in self._payments:
                self._payments[client_id] = {}
                for index in range(1, 4):
                    payment = _demo_payment(client_id, index)
                    self._payments[client_id][payment["id"]] = payment
        return client

    @property
    def clients(self) -> dict[str, FakeClient]:
        """Snapshot of registered clients by id."""
        with self._lock:
            return dict(self._clients)

    def add_payment(self, client_id: str, payment: Mapping[str, Any]) -> dict[str, Any]:
        """Store a payment visible to ``client_id``; missing fields get spec-shaped defaults."""
        with self._lock:
            if client_id not in self._clients:
                raise KeyError(f"unknown client {client_id!r}; register_client() it first")
            store = self._payments.setdefault(client_id, {})
            index = len(store) + 1
            full = _demo_payment(client_id, index, now=time.time())
            full["id"] = f"pay_{client_id}_{index}"
            while full["id"] in store:
                index += 1
                full["id"] = f"pay_{client_id}_{index}"
            full.update(copy.deepcopy(dict(payment)))
            store[full["id"]] = full
            return copy.deepcopy(full)

    def payments(self, client_id: str) -> list[dict[str, Any]]:
        """Copies of the payments visible to ``client_id`` (insertion order)."""
        with self._lock:
            return copy.deepcopy(list(self._payments.get(client_id, {}).values()))

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
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._faults.extend([(kind, retry_after)] * count)

    def clear_faults(self) -> None:
        """Drop faults that have not been served yet."""
        with self._lock:
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

    def api_request_count(self, client_id: str | None = None) -> int:
        """Requests to the API (any status), total or per client (the token's ``azp``)."""
        with self._lock:
            if client_id is None:
                return len(self.api_requests)
            return sum(1 for r in self.api_requests if r["client_id"] == client_id)

    def reset_counters(self) -> None:
        """Forget logged token and API requests (not clients, payments or faults)."""
        with self._lock:
            self.token_requests.clear()
            self.api_requests.clear()
            self._received.clear()

    def _sleep(self, seconds: float) -> None:
        if seconds and seconds > 0:
            self._stopping.wait(seconds)

    # ------------------------------------------------------------------ /oauth/token
    def _handle_token(self, handler: _Handler, body: bytes) -> None:
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
            handler._send(
                405,
                {"error": "invalid_request", "error_description": "Method not allowed"},
                headers={"Allow": "POST"},
            )
            return
        self._sleep(self.token_latency)
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            self._serve_fault(handler, entry, params, *fault)
            return
        try:
            if parse_error:
                raise _ReplyError(400, _oauth_error("invalid_request", parse_error))
            status, payload = self._token_response(params, auth_client_id, auth_secret)
        except _ReplyError as reply:
            error = reply.body.get("error") if isinstance(reply.body, dict) else None
            self._log_token(entry, reply.status, error)
            handler._send(reply.status, reply.body, headers=_no_store(reply.headers))
            return
        self._log_token(entry, status, None)
        handler._send(status, payload, headers=_no_store())

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
    ) -> tuple[int, dict[str, Any]]:
        for name in ("grant_type", "client_id", "client_secret", "audience", "scope"):
            value = params.get(name)
            if value is not None and not isinstance(value, str):
                raise _ReplyError(
                    400, _oauth_error("invalid_request", f"Invalid parameter type: {name}")
                )
        grant_type = params.get("grant_type")
        if not grant_type:
            raise _ReplyError(
                400, _oauth_error("invalid_request", "Missing required parameter: grant_type")
            )
        if grant_type not in _KNOWN_GRANT_TYPES:
            raise _ReplyError(
                400,
                _oauth_error("unsupported_grant_type", f"Unsupported grant type: {grant_type}"),
            )
        if auth_client_id is not None:
            body_id = params.get("client_id")
            if body_id is not None and body_id != auth_client_id:
                raise _ReplyError(
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
            raise _ReplyError(
                400, _oauth_error("invalid_request", "Missing required parameter: client_id")
            )
        if secret is None or secret == "":
            raise _ReplyError(
                400, _oauth_error("invalid_request", "Missing required parameter: client_secret")
            )
        with self._lock:
            client = self._clients.get(client_id)
        if client is None or not hmac.compare_digest(
            client.client_secret.encode("utf-8"), secret.encode("utf-8")
        ):
            raise _ReplyError(401, _oauth_error("access_denied", "Unauthorized"))
        if grant_type not in client.grant_types:
            raise _ReplyError(
                403,
                _oauth_error(
                    "unauthorized_client",
                    f"Grant type '{grant_type}' not allowed for the client.",
                ),
            )
        # Auth0's tenant "Default Audience" applies when a request names none.
        audience = params.get("audience") or self.default_audience
        if not audience:
            raise _ReplyError(
                400, _oauth_error("invalid_request", "Missing required parameter: audience")
            )
        if audience not in ENVIRONMENT_AUDIENCES.values() or audience not in client.audiences:
            raise _ReplyError(
                403,
                _oauth_error("access_denied", f"Service not enabled within domain: {audience}"),
            )
        requested = list(dict.fromkeys((params.get("scope") or "").split()))
        if requested:
            missing = [s for s in requested if s not in client.scopes]
            if missing:
                raise _ReplyError(
                    403,
                    _oauth_error(
                        "access_denied",
                        f"Client has not been granted scopes: {' '.join(missing)}",
                    ),
                )
            granted = " ".join(requested)
        else:
            granted = " ".join(client.scopes)
        lifetime = int(self.token_lifetime)
        token = self._mint(client_id, audience, granted, lifetime)
        return 200, {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": granted,
        }

    def _serve_fault(
        self,
        handler: _Handler,
        entry: dict[str, Any],
        params: dict[str, Any],
        kind: str,
        retry_after: int | None,
    ) -> None:
        entry["fault"] = kind
        extra: dict[str, str] = {}
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        if kind == "reset":
            self._log_token(entry, None, "connection_reset")
            handler._reset_connection()
            return
        if kind == "timeout":
            self._sleep(self.fault_timeout_sleep)
            kind = "500"
        if kind == "500":
            body = _oauth_error("server_error", "An unexpected error occurred")
            self._log_token(entry, 500, "server_error")
            handler._send(500, body, headers=_no_store(extra))
        elif kind == "502_html":
            self._log_token(entry, 502, "bad_gateway")
            handler._send(
                502, _BAD_GATEWAY_HTML, content_type="text/html; charset=utf-8", headers=extra
            )
        elif kind == "503":
            body = _oauth_error("temporarily_unavailable", "Service Unavailable")
            self._log_token(entry, 503, "temporarily_unavailable")
            handler._send(503, body, headers=_no_store(extra))
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
            handler._send(429, body, headers=_no_store(headers))
        elif kind == "quota_429":
            wait = 3540 if retry_after is None else retry_after
            headers = {
                "Retry-After": str(wait),
                "Auth0-Client-Quota-Limit": f"b=per_hour;q=10;r=0;t={wait}",
            }
            body = _oauth_error("too_many_requests", "Quota exceeded")
            self._log_token(entry, 429, "too_many_requests")
            handler._send(429, body, headers=_no_store(headers))
        elif kind == "malformed_json":
            self._log_token(entry, 200, "malformed_json")
            handler._send(200, b'{"access_token": "eyJ', headers=_no_store())
        elif kind == "missing_fields":
            self._log_token(entry, 200, "missing_fields")
            body = {"token_type": "Bearer", "expires_in": int(self.token_lifetime)}
            handler._send(200, body, headers=_no_store())
        elif kind == "negative_expires":
            client_id = entry["client_id"] or "unknown"
            audience = params.get("audience") if isinstance(params.get("audience"), str) else ""
            scope = params.get("scope") if isinstance(params.get("scope"), str) else ""
            token = self._mint(client_id, audience or LIVE_AUDIENCE, scope or "", -5)
            self._log_token(entry, 200, "negative_expires")
            body = {"access_token": token, "token_type": "Bearer", "expires_in": -5}
            body["scope"] = scope or ""
            handler._send(200, body, headers=_no_store())
        else:  # pragma: no cover - guarded by fail_next_token_requests
            raise AssertionError(kind)

    # ------------------------------------------------------------------ API
    def _handle_api(self, handler: _Handler, path: str, body: bytes) -> None:
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
        self._sleep(self.api_latency)
        try:
            status, payload = self._api_response(handler, path, body, entry)
            headers: dict[str, str] = {}
            content_type = "application/json"
        except _ReplyError as reply:
            status, payload, headers = reply.status, reply.body, reply.headers
            content_type = reply.content_type
        if isinstance(payload, dict) and content_type == "application/problem+json":
            payload.setdefault("instance", path)
        headers["Getpaid-Trace-Id"] = trace_id
        entry["status"] = status
        with self._lock:
            self.api_requests.append(entry)
        handler._send(status, payload, content_type=content_type, headers=headers)

    def _api_response(
        self, handler: _Handler, path: str, body: bytes, entry: dict[str, Any]
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
            with self._lock:
                payment = self._payments.get(claims["azp"], {}).get(route[2])
                payment = copy.deepcopy(payment)
            if payment is None:
                _raise_problem(404, "not-found", "Not Found", f"Payment {route[2]} not found")
            return 200, payment
        _raise_problem(404, "not-found", "Not Found", f"No route for {path}")

    def _authenticate(
        self, handler: _Handler, environment: str | None, entry: dict[str, Any]
    ) -> dict[str, Any]:
        authorization = handler.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if not authorization:
            _unauthorized("Missing Authorization header with a Bearer access token")
        if scheme.lower() != "bearer" or not token:
            _unauthorized("Malformed Authorization header; expected 'Bearer <token>'")
        try:
            _header, unverified = decode_jwt(token, self._key)
        except InvalidTokenError as exc:
            _unauthorized(f"Invalid access token: {exc}")
        if isinstance(unverified.get("azp"), str):
            entry["client_id"] = unverified["azp"]
        try:
            claims = self.verify_token(token)
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

    def _query_payments(self, client_id: str, handler: _Handler, body: bytes) -> dict[str, Any]:
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

        with self._lock:
            items = [_payment_summary(p) for p in self._payments.get(client_id, {}).values()]
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


# ---------------------------------------------------------------------- helpers
def _oauth_error(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


def _no_store(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    headers.update(extra or {})
    return headers


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
    raise _ReplyError(status, body, content_type="application/problem+json", headers=headers)


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


def _parse_token_request(
    handler: _Handler, body: bytes
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


def _filter_payments(items: list[dict[str, Any]], filters: Mapping[str, Any]) -> list[dict]:
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
        bad = [s for s in statuses if s not in _PAYMENT_STATUSES]
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
        result.sort(key=lambda p, f=field: _sort_key(p, f), reverse=direction == "descending")
    return result


def _sort_key(payment: Mapping[str, Any], field: str) -> Any:
    if field == "amount":
        return payment.get("amount") or 0
    if field == "seller_legal_name":
        return str((payment.get("seller") or {}).get("legal_name") or "")
    return str(payment.get(field) or "")


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


def _demo_payment(client_id: str, index: int, now: float | None = None) -> dict[str, Any]:
    """A payment shaped like the spec's GetPaymentResponse (CompletePayment example)."""
    status, amount, currency, created, hint, scheme = _DEMO_PAYMENTS[(index - 1) % 3]
    seller_id, seller_name = _DEMO_SELLERS[(index - 1) % 3]
    if now is not None:
        status, created = "captured", _iso(now)
    platform_cut = amount // 10
    refunded = amount if status == "refunded" else 0
    captured = amount if status in ("captured", "refunded") else 0
    fees = round(amount * 0.029) + 25 if captured else 0
    payment: dict[str, Any] = {
        "id": f"pay_{client_id}_{index}",
        "status": status,
        "reference": f"ORD-202510-{index:04d}",
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


def _payment_summary(payment: Mapping[str, Any]) -> dict[str, Any]:
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
