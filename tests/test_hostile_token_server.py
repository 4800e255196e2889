"""A token endpoint that is slow, huge, malformed or malicious gets typed, bounded errors.

Nothing bad is cached, no wait is unbounded, and neither the client secret nor an access
token shows up in messages, logs, command output or Django's error reports.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import quote_plus

import pytest
import responses
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, RequestFactory
from django.urls import path
from django.views.debug import ExceptionReporter, technical_500_response

from django_getpaid_auth import cache_backend, credentials, get_token, token_client, token_store
from django_getpaid_auth.exceptions import (
    MalformedTokenResponseError,
    RateLimitedError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)
from django_getpaid_auth.testing import TokenEndpoint, auth0_error, make_jwt
from django_getpaid_auth.token_client import rate_limit_wait, request_token
from django_getpaid_auth.tokens import jwt_claims, jwt_expiry
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

CONTROL = ("\x1b", "\x9b", "\x07", "\x00", "\u202e", "\u2066", "\x7f")


def answer(**fields) -> tuple[int, dict[str, str], str]:
    payload = {"access_token": make_jwt({"exp": int(time.time()) + 3600}), "token_type": "Bearer"}
    payload["expires_in"] = 3600
    payload.update(fields)
    payload = {k: v for k, v in payload.items() if v is not None}
    return 200, {"Content-Type": "application/json"}, json.dumps(payload)


def snapshot_for(tenant):
    return credentials.resolve(tenant)


def nothing_cached(tenant) -> bool:
    return cache_backend.get(token_store.token_key(snapshot_for(tenant))) is None


# --- a real, hostile HTTP server ----------------------------------------------------------

MAX_DRIP = 4.0  # the server gives up after this: the old, unbounded client then returns


class HostileServer:
    """Accepts connections on 127.0.0.1 and answers each with ``behaviour(server, conn)``."""

    def __init__(self, behaviour: Callable[[HostileServer, socket.socket], None]) -> None:
        self.behaviour = behaviour
        self.stop = threading.Event()
        self.sent = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth/token"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                read_request(conn)
                self.behaviour(self, conn)
            except OSError:
                pass

    def send(self, conn: socket.socket, data: bytes) -> bool:
        try:
            conn.sendall(data)
        except OSError:
            return False
        with self._lock:
            self.sent += len(data)
        return True

    def drip(self, conn: socket.socket, data: bytes, every: float = 0.2) -> None:
        """One byte every ``every`` seconds, for at most MAX_DRIP seconds."""
        ends = time.monotonic() + MAX_DRIP
        for byte in data:
            if time.monotonic() > ends or self.stop.wait(every):
                return
            if not self.send(conn, bytes([byte])):
                return

    def close(self) -> None:
        self.stop.set()
        self._listener.close()
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)


def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


@pytest.fixture
def hostile(settings):
    """Start a HostileServer and point TOKEN_URL at it; deadline 1 s, no retries."""
    servers: list[HostileServer] = []

    def start(behaviour, **overrides) -> HostileServer:
        server = HostileServer(behaviour)
        servers.append(server)
        settings.GETPAID_AUTH = {
            **settings.GETPAID_AUTH,
            "TOKEN_URL": server.url,
            "TOKEN_REQUEST_DEADLINE": 1.0,
            "TOKEN_REQUEST_RETRIES": 0,
            "TOKEN_REQUEST_TIMEOUT": (5.0, 5.0),
            **overrides,
        }
        return server

    yield start
    for server in servers:
        server.close()


def token_body(**extra) -> bytes:
    payload = {
        "access_token": make_jwt({"exp": int(time.time()) + 3600}),
        "token_type": "Bearer",
        "expires_in": 3600,
        **extra,
    }
    return json.dumps(payload).encode()


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def drip_headers(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    server.drip(conn, b"X-Padding: " + b"a" * 1000 + b"\r\n\r\n")


def drip_body(server, conn):
    body = token_body()
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    server.send(conn, b"Content-Length: %d\r\n\r\n" % len(body))
    server.drip(conn, body)


def drip_body_until_close(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    server.send(conn, b"Connection: close\r\n\r\n")
    server.drip(conn, token_body())


def silence(server, conn):
    server.stop.wait(MAX_DRIP)


@pytest.mark.parametrize(
    "behaviour",
    [drip_headers, drip_body, drip_body_until_close, silence],
    ids=["headers", "body", "body-until-close", "silence"],
)
def test_a_dripping_endpoint_is_cut_at_the_deadline(hostile, behaviour, all_logs):
    hostile(behaviour)
    tenant = make_tenant()
    make_credential(tenant)
    error, elapsed = timed(lambda: get_token(tenant))
    assert isinstance(error, TokenEndpointUnavailableError), error
    assert error.retryable and "timed out" in str(error)
    assert elapsed < 2.0, f"took {elapsed:.2f}s with a 1s deadline"
    assert nothing_cached(tenant)


def test_retries_share_a_bounded_budget(hostile):
    server = hostile(drip_headers, TOKEN_REQUEST_DEADLINE=0.6, TOKEN_REQUEST_RETRIES=5)
    tenant = make_tenant()
    make_credential(tenant)
    assert token_client.request_budget() == pytest.approx(1.2)
    error, elapsed = timed(lambda: request_token(snapshot_for(tenant)))
    assert isinstance(error, TokenEndpointUnavailableError)
    assert elapsed < 1.2 + 0.6, f"took {elapsed:.2f}s; budget 1.2s"
    assert 1 <= server.connections <= 3


def test_a_fast_real_endpoint_still_works_and_reuses_its_connection(hostile):
    def good(server, conn):
        while True:
            body = token_body()
            server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            server.send(conn, b"Content-Length: %d\r\n\r\n" % len(body) + body)
            conn.settimeout(2)
            try:
                read_request(conn)
            except OSError:
                return

    server = hostile(good)
    tenant = make_tenant()
    make_credential(tenant)
    first = request_token(snapshot_for(tenant))
    time.sleep(1.2)  # past the first request's deadline: its watchdog must not cut anything
    second = request_token(snapshot_for(tenant))
    assert first.value != second.value
    assert server.connections == 1


def huge_declared(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    server.send(conn, b"Content-Length: 50000000\r\n\r\n")
    chunk = b" " * 65536
    while server.sent < 50_000_000 and server.send(conn, chunk):
        pass


def huge_chunked(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    server.send(conn, b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
    while server.sent < 50_000_000 and server.send(conn, chunk):
        pass


@pytest.mark.parametrize("behaviour", [huge_declared, huge_chunked], ids=["declared", "chunked"])
def test_a_huge_answer_is_refused_without_reading_it(hostile, behaviour):
    server = hostile(behaviour, TOKEN_REQUEST_DEADLINE=10.0)
    tenant = make_tenant()
    make_credential(tenant)
    error, _ = timed(lambda: get_token(tenant))
    assert isinstance(error, MalformedTokenResponseError), error
    assert "larger than 65536 bytes" in str(error)
    time.sleep(0.2)  # let the server notice the closed connection
    assert server.sent < 25_000_000, f"the client read {server.sent} bytes of 50 MB"
    assert nothing_cached(tenant)


def test_a_compressed_answer_cannot_exceed_the_size_limit(hostile):
    padded = token_body(padding=" " * 20_000_000)
    bomb = gzip.compress(padded)
    assert len(bomb) < 65536

    def gzip_bomb(server, conn):
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        server.send(conn, b"Content-Encoding: gzip\r\n")
        server.send(conn, b"Content-Length: %d\r\n\r\n" % len(bomb) + bomb)

    hostile(gzip_bomb)
    tenant = make_tenant()
    make_credential(tenant)
    with pytest.raises(MalformedTokenResponseError, match="larger than 65536 bytes"):
        get_token(tenant)
    assert nothing_cached(tenant)


def test_a_small_compressed_answer_is_accepted(hostile):
    packed = gzip.compress(token_body())

    def gzipped(server, conn):
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        server.send(conn, b"Content-Encoding: gzip\r\n")
        server.send(conn, b"Content-Length: %d\r\n\r\n" % len(packed) + packed)

    hostile(gzipped)
    tenant = make_tenant()
    make_credential(tenant)
    assert get_token(tenant).token_type == "Bearer"


# --- item 6: the access token itself ---------------------------------------------------------

BAD_TOKENS = {
    "crlf": "eyJhbGciOi.eyJzdWIi.sig\r\nX-Injected: yes",
    "lf": "abcdef\nghijkl",
    "space": "abc def",
    "tab": "abc\tdef",
    "non-ascii": "tökenvalue",
    "comma": "abc,def",
    "padding-inside": "abc=def",
    "nul": "abc\x00def",
    "too-long": "a" * (16 * 1024 + 1),
}


@pytest.mark.parametrize("value", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_a_token_that_is_not_a_b64token_is_refused_and_not_cached(endpoint, value, all_logs, rsps):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(answer(access_token=value))
    with pytest.raises(MalformedTokenResponseError) as excinfo:
        get_token(tenant)
    for text in (str(excinfo.value), repr(excinfo.value), all_logs.text):
        assert value not in text
        assert value[:12] not in text
    assert nothing_cached(tenant)


@pytest.mark.parametrize("value", ["abc", "a-b.c_d~e+f/g==", "x" * 16 * 1024])
def test_valid_b64tokens_are_accepted(endpoint, value):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(answer(access_token=value))
    assert get_token(tenant).value == value


# --- item 10: hostile numbers, nesting, waits ------------------------------------------------


@pytest.mark.parametrize(
    "expires_in",
    ["³", "٣٦٠٠", "9" * 5000, "3600.5", " 3600", 0, -1, True, 3600.0, None, [3600], {"a": 1}],
    ids=[
        "superscript",
        "arabic-digits",
        "5000-digits",
        "decimal-string",
        "space",
        "zero",
        "negative",
        "bool",
        "float",
        "null",
        "list",
        "object",
    ],
)
def test_a_bad_expires_in_is_a_typed_error(endpoint, expires_in, canary):
    tenant = make_tenant()
    make_credential(tenant, client_secret=canary)
    endpoint.fail_next(answer(expires_in=expires_in))
    with pytest.raises(MalformedTokenResponseError, match="expires_in") as excinfo:
        get_token(tenant)
    assert len(str(excinfo.value)) < 1000
    assert nothing_cached(tenant)


@pytest.mark.parametrize("expires_in", [10**20, 10**400, "99999999999999999999"])
def test_an_absurd_expires_in_is_capped_to_a_year(endpoint, expires_in, fake_clock):
    tenant = make_tenant()
    make_credential(tenant)
    value = make_jwt({"sub": "x"})  # no exp claim
    endpoint.fail_next(
        (
            200,
            {},
            f'{{"access_token": "{value}", "token_type": "Bearer", '
            f'"expires_in": {json.dumps(expires_in)}}}',
        )
    )
    token = get_token(tenant)
    assert token.lifetime == token_client.MAX_EXPIRES_IN == 365 * 24 * 3600


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "body",
    [nested(30000), '{"access_token": ' + nested(20000) + "}", "NaN", '{"expires_in": Infinity}'],
    ids=["nested-array", "nested-in-object", "nan", "infinity"],
)
def test_deep_or_nonstandard_json_is_a_typed_error(endpoint, body):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next((200, {"Content-Type": "application/json"}, body))
    with pytest.raises(MalformedTokenResponseError):
        get_token(tenant)
    assert nothing_cached(tenant)


def test_deep_json_in_an_error_answer_is_classified_by_status(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next((401, {"Content-Type": "application/json"}, nested(30000)))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    assert excinfo.value.status == 401


def jwt_with_payload(payload: str) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64(b'{}')}.{b64(payload.encode())}.c2ln"


def test_jwt_payload_nesting_and_huge_exp_are_ignored(endpoint):
    deep = jwt_with_payload('{"a": ' + nested(5000) + "}")
    claims = jwt_claims(deep)  # RecursionError on CPython < 3.12; parses on 3.13
    assert claims is None or isinstance(claims, dict)
    assert jwt_expiry(deep) is None
    huge_exp = jwt_with_payload('{"exp": 1' + "0" * 400 + "}")
    assert jwt_expiry(huge_exp) is None
    assert jwt_expiry(jwt_with_payload('{"exp": NaN}')) is None
    assert jwt_expiry(jwt_with_payload('{"exp": 1e999}')) is None
    for value in (deep, huge_exp):
        tenant = make_tenant()
        make_credential(tenant)
        endpoint.fail_next(answer(access_token=value, expires_in=600))
        assert get_token(tenant).lifetime == 600


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "30"}, 30.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "²"}, None),
        ({"Retry-After": "٣"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "Wed, 99 Foo 2024 99:99:99 GMT"}, None),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, 24 * 3600.0),
        ({"Retry-After": "Mon, 01 Jan 2001 00:00:00 GMT"}, 0.0),
        ({"Retry-After": "9" * 400}, None),
        ({"Retry-After": "9" * 20}, 24 * 3600.0),
        ({"x-ratelimit-reset": "¹"}, None),
        ({"x-ratelimit-reset": "99999999999999"}, 24 * 3600.0),
        ({"Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=0;t=³"}, None),
        ({"Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=0;t=99999999"}, 24 * 3600.0),
    ],
)
def test_rate_limit_wait_understands_only_sane_numbers_and_dates(headers, expected):
    wait, _ = rate_limit_wait(headers)
    assert wait == expected


RETRY_AFTERS = [
    "1.5",
    "soon",
    "²",
    "Wed, 99 Foo 2024",
    "9" * 400,
    "",
    "Fri, 31 Dec 9999 23:59:59 GMT",
]


@pytest.mark.parametrize("retry_after", RETRY_AFTERS)
def test_a_429_is_always_rate_limited_with_a_finite_wait(endpoint, retry_after):
    tenant = make_tenant()
    make_credential(tenant)
    headers = {"Retry-After": retry_after, "x-ratelimit-reset": "¹"} if retry_after else {}
    endpoint.fail_next(auth0_error(429, "too_many_requests", "slow down", **headers))
    with pytest.raises(RateLimitedError) as excinfo:
        get_token(tenant)
    wait = excinfo.value.retry_after
    assert wait is not None and 0 <= wait <= 24 * 3600
    assert excinfo.value.to_dict()["retry_after"] == wait
    # remembered: the next call fails fast without asking the endpoint again
    with pytest.raises(RateLimitedError):
        get_token(tenant)
    assert endpoint.count == 1


def test_a_429_without_any_hint_waits_the_default(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next((429, {}, ""))
    with pytest.raises(RateLimitedError) as excinfo:
        get_token(tenant)
    assert excinfo.value.retry_after == token_client.DEFAULT_RETRY_AFTER == 60.0


# --- item 12: scrubbing ---------------------------------------------------------------------


def secret_leaks(texts, *fragments) -> list[str]:
    return [f for f in fragments for t in texts if f and f in t]


def error_texts(error, logs) -> list[str]:
    return [str(error), repr(error), json.dumps(error.to_dict()), logs.text]


def test_a_secret_straddling_the_cut_is_masked(endpoint, canary, all_logs):
    tenant = make_tenant()
    make_credential(tenant, client_secret=canary)
    endpoint.fail_next(auth0_error(401, "access_denied", "x" * 290 + canary))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    assert not secret_leaks(error_texts(excinfo.value, all_logs), canary, canary[:10])


@pytest.mark.parametrize(
    "secret",
    ["tab\tsecret-canary-1", "two  spaces-canary-2", "new\nline-canary-3", "Zq7", "k9"],
    ids=["tab", "double-space", "newline", "short", "two-chars"],
)
def test_secrets_with_whitespace_or_short_are_masked(endpoint, secret, all_logs):
    tenant = make_tenant()
    make_credential(tenant, client_secret=secret)
    endpoint.fail_next(auth0_error(401, "access_denied", f"Unauthorized: secret {secret} is wrong"))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    fragments = [secret, " ".join(secret.split()), *[p for p in secret.split() if len(p) > 3]]
    assert not secret_leaks(error_texts(excinfo.value, all_logs), *fragments)
    assert "Unauthorized: secret *** is wrong" in str(excinfo.value)


def test_json_escaped_and_url_encoded_echoes_are_masked(endpoint, all_logs):
    secret = 'pa"ss\\word/+&= canary-4'
    tenant = make_tenant()
    make_credential(tenant, client_secret=secret)
    echo = json.dumps({"client_secret": secret}) + " client_secret=" + quote_plus(secret)
    endpoint.fail_next(auth0_error(400, "invalid_request", echo))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    escaped = json.dumps(secret)[1:-1]
    assert not secret_leaks(error_texts(excinfo.value, all_logs), escaped, quote_plus(secret))
    assert "canary-4" not in str(excinfo.value)


@pytest.mark.parametrize("field", ["error", "token_type", "expires_in", "content_type", "trace"])
def test_the_secret_in_any_quoted_field_is_masked(endpoint, canary, all_logs, field):
    tenant = make_tenant()
    make_credential(tenant, client_secret=canary)
    if field == "error":
        endpoint.fail_next(auth0_error(401, canary, "no"))
    elif field == "token_type":
        endpoint.fail_next(answer(token_type=canary))
    elif field == "expires_in":
        endpoint.fail_next(answer(expires_in=canary))
    elif field == "content_type":
        endpoint.fail_next((200, {"Content-Type": canary}, "not json"))
    else:
        endpoint.fail_next(auth0_error(401, "access_denied", "no", **{"Getpaid-Trace-Id": canary}))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    assert not secret_leaks(error_texts(excinfo.value, all_logs), canary, canary[:12])


def test_scrubbed_text_reaches_getpaid_check_and_the_database(canary):
    secret = f"tab\t{canary}"
    credential = make_credential(make_tenant("acme"), client_secret=secret)
    with responses.RequestsMock() as rsps:
        endpoint = TokenEndpoint(rsps)
        endpoint.fail_next(auth0_error(401, "access_denied", f"bad secret {secret}"))
        out, err = io.StringIO(), io.StringIO()
        with pytest.raises(CommandError):
            call_command("getpaid_check", stdout=out, stderr=err)
    credential.refresh_from_db()
    for text in (out.getvalue(), err.getvalue(), credential.last_check_error):
        assert canary not in text
    assert "bad secret ***" in credential.last_check_error


# --- item 15: control characters ---------------------------------------------------------------

HOSTILE_TEXT = "\x1b[2J\x1b]0;pwned\x07 evil\u202etxt.exe \x9b31m\x7f\x00\u2066"


def test_control_characters_from_the_server_are_escaped_at_the_source(endpoint, all_logs):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(
        auth0_error(
            401,
            HOSTILE_TEXT,
            "desc " + HOSTILE_TEXT,
            **{"Getpaid-Trace-Id": "trace\x1b[31m", "Retry-After": "1"},
        )
    )
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    error = excinfo.value
    for text in (error.error, error.error_description, error.trace_id, str(error), all_logs.text):
        assert not [c for c in CONTROL if c in text], repr(text)
    assert "\\x1b[2J" in error.error and "\\u202e" in error.error_description


def test_control_characters_in_a_429_quota_are_escaped(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(
        auth0_error(429, "x", "y", **{"Auth0-Client-Quota-Limit": "b=per_hour\x1b[2J;t=5"})
    )
    with pytest.raises(RateLimitedError) as excinfo:
        get_token(tenant)
    assert "\x1b" not in excinfo.value.quota and "\\x1b" in excinfo.value.quota


def test_getpaid_check_prints_no_control_characters_from_the_server():
    credential = make_credential(make_tenant("acme"))
    with responses.RequestsMock() as rsps:
        endpoint = TokenEndpoint(rsps)
        endpoint.fail_next(auth0_error(401, HOSTILE_TEXT, HOSTILE_TEXT))
        out = io.StringIO()
        with pytest.raises(CommandError):
            call_command("getpaid_check", "--verbosity", "2", stdout=out, stderr=io.StringIO())
    assert not [c for c in CONTROL if c in out.getvalue()], repr(out.getvalue())
    assert "\\x1b[2J" in out.getvalue()
    credential.refresh_from_db()
    assert not [c for c in CONTROL if c in credential.last_check_error]


def test_getpaid_check_escapes_control_characters_from_the_database_too(endpoint):
    """Defence in depth: tenant names/keys and anything else printed are escaped as well."""
    make_credential(make_tenant("evil\x1b[31m", name="Evil \u202e corp"), client_id="cid\x9b")
    out = io.StringIO()
    call_command("getpaid_check", "--verbosity", "3", stdout=out, stderr=io.StringIO())
    assert not [c for c in CONTROL if c in out.getvalue()], repr(out.getvalue())
    assert "evil\\x1b[31m" in out.getvalue()
    out = io.StringIO()
    call_command("getpaid_check", "--json", stdout=out, stderr=io.StringIO())
    assert not [c for c in CONTROL if c in out.getvalue()], repr(out.getvalue())
    (result,) = json.loads(out.getvalue())["results"]
    assert result["tenant"] == "Evil \u202e corp"  # same value, escaped as \u202e
    assert result["tenant_key"] == "evil\x1b[31m"


# --- item 4: Django error reports ---------------------------------------------------------------


def token_view(request, slug):
    return {"token": get_token(slug).fingerprint}  # raises for every case below


urlpatterns = [path("token/<slug>/", token_view)]


def reports(settings, slug: str, *, debug: bool) -> list[str]:
    """The technical 500 page (DEBUG) or error-email reports (not DEBUG), HTML and text."""
    settings.DEBUG = debug
    client = Client(raise_request_exception=False)
    response = client.get(f"/token/{slug}/")
    assert response.status_code == 500
    exc_info = response.exc_info
    assert exc_info is not None and isinstance(exc_info[1], TokenRequestError)
    request = RequestFactory().get(f"/token/{slug}/")
    reporter = ExceptionReporter(request, *exc_info)
    texts = [reporter.get_traceback_html(), reporter.get_traceback_text()]
    if debug:
        page = technical_500_response(request, *exc_info).content.decode()
        texts += [response.content.decode(), page]
    for text in texts:
        assert type(exc_info[1]).__name__ in text  # the report still renders
        assert "_request_once" in text  # with our frames
    return texts


SETTINGS_CASES = {
    "post-json": {},
    "basic-form": {"TOKEN_REQUEST_FORMAT": "form", "CLIENT_AUTH_METHOD": "client_secret_basic"},
}


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("debug", [True, False], ids=["debug", "error-email"])
@pytest.mark.parametrize("mode", SETTINGS_CASES.values(), ids=SETTINGS_CASES.keys())
def test_error_reports_show_no_secret(settings, endpoint, canary, debug, mode):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, **mode}
    make_credential(make_tenant("acme"), client_secret=canary)
    endpoint.fail_next(auth0_error(401, "access_denied", "Unauthorized"))
    for text in reports(settings, "acme", debug=debug):
        assert canary not in text
        assert base64.b64encode(f"client-acme-sandbox:{canary}".encode()).decode() not in text


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("debug", [True, False], ids=["debug", "error-email"])
def test_error_reports_of_a_transport_failure_show_no_secret(settings, canary, debug):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: connection refused
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "TOKEN_URL": f"http://127.0.0.1:{port}/oauth/token",
        "TOKEN_REQUEST_RETRIES": 0,
    }
    make_credential(make_tenant("acme"), client_secret=canary)
    for text in reports(settings, "acme", debug=debug):
        assert canary not in text


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("debug", [True, False], ids=["debug", "error-email"])
def test_error_reports_show_no_rejected_token(settings, endpoint, canary, debug, fake_clock):
    value = make_jwt({"exp": int(fake_clock()) - 100, "canary": canary})  # already expired
    make_credential(make_tenant("acme"), client_secret=canary)
    endpoint.fail_next(answer(access_token=value))
    for text in reports(settings, "acme", debug=debug):
        assert canary not in text and value not in text
        assert value.split(".")[1][:20] not in text


def test_sensitive_functions_are_marked():
    for function in (
        token_client.request_token,
        token_client._request_once,
        token_client._parse_success,
        token_client._error_for,
        token_client._scrub,
    ):
        assert function.__code__.co_name == "sensitive_variables_wrapper", function


def test_no_thread_or_socket_is_left_behind(hostile):
    hostile(drip_headers)
    tenant = make_tenant()
    make_credential(tenant)
    before = threading.active_count()
    for _ in range(3):
        with pytest.raises(TokenEndpointUnavailableError):
            request_token(snapshot_for(tenant))
    time.sleep(0.3)
    watchdogs = [t for t in threading.enumerate() if t.name == "getpaid-token-deadline"]
    assert not watchdogs
    assert threading.active_count() <= before + 3  # only the server's own threads remain


@pytest.mark.parametrize(
    ("secret", "echo"),
    [
        ("abc12", "client_secret=abc12x was refused"),  # a short secret inside a word
        ("p<ss&word-canary-5", "secret p&lt;ss&amp;word-canary-5 refused"),  # HTML-escaped
    ],
    ids=["short-inside-a-word", "html-escaped"],
)
def test_secret_echoed_inside_words_or_html_escaped_is_masked(endpoint, secret, echo, all_logs):
    tenant = make_tenant()
    make_credential(tenant, client_secret=secret)
    endpoint.fail_next(auth0_error(400, "invalid_request", echo))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    leaked = [secret, "p&lt;ss&amp;word-canary-5"]
    assert not secret_leaks(error_texts(excinfo.value, all_logs), *leaked)
    assert "***" in str(excinfo.value)
