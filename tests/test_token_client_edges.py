"""Token endpoint answers the common tests do not send: odd bodies, encodings, error fields,
rate limits on the last attempt, naive HTTP dates, and token requests through an HTTP proxy.
"""

from __future__ import annotations

import json
import time

import pytest

from django_getpaid_auth import get_token
from django_getpaid_auth.exceptions import (
    InvalidClientError,
    MalformedTokenResponseError,
    RateLimitedError,
    TokenRequestError,
)
from django_getpaid_auth.testing import FakeGetpaid, auth0_error
from django_getpaid_auth.token_client import MAX_WAIT, rate_limit_wait
from tests.factories import make_credential, make_tenant
from tests.test_hostile_token_server import HostileServer, token_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenant():
    tenant = make_tenant()
    make_credential(tenant)
    return tenant


@pytest.fixture
def raw_endpoint(settings):
    """TOKEN_URL answered with the given raw HTTP bytes (head and body as sent)."""
    servers: list[HostileServer] = []

    def start(answer: bytes, *, drip: bool = False) -> HostileServer:
        head, _, body = answer.partition(b"\r\n\r\n")

        def behaviour(server, conn):
            server.send(conn, head + b"\r\n\r\n")
            if drip:
                server.drip(conn, body)
            else:
                server.send(conn, body)

        server = HostileServer(behaviour)
        servers.append(server)
        settings.GETPAID_AUTH = {
            **settings.GETPAID_AUTH,
            "TOKEN_URL": server.url,
            "TOKEN_REQUEST_DEADLINE": 1.0,
            "TOKEN_REQUEST_RETRIES": 0,
        }
        return server

    yield start
    for server in servers:
        server.close()


def http(status: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


# --- 200 answers that are not a token -------------------------------------------------------


def test_a_json_array_is_not_a_token_answer(endpoint, tenant):
    endpoint.fail_next((200, {"Content-Type": "application/json"}, json.dumps([{"a": 1}])))
    with pytest.raises(MalformedTokenResponseError, match="the JSON is not an object"):
        get_token(tenant)


def test_an_invalid_content_length_is_refused(raw_endpoint, tenant):
    raw_endpoint(http("200 OK", {"Content-Length": "12abc"}, token_body()))
    with pytest.raises(MalformedTokenResponseError, match="with an invalid Content-Length"):
        get_token(tenant)


def test_an_unsupported_content_encoding_is_refused(raw_endpoint, tenant):
    body = token_body()
    raw_endpoint(http("200 OK", {"Content-Encoding": "br", "Content-Length": str(len(body))}, body))
    with pytest.raises(MalformedTokenResponseError, match="with Content-Encoding 'br'"):
        get_token(tenant)


def test_a_body_claimed_gzip_that_is_not_compressed_is_unparseable(raw_endpoint, tenant):
    body = b"garbage, not gzip, not zlib, not deflate"
    raw_endpoint(
        http(
            "200 OK",
            {
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "Content-Length": str(len(body)),
            },
            body,
        )
    )
    with pytest.raises(MalformedTokenResponseError, match="not with JSON"):
        get_token(tenant)


# --- error answers ----------------------------------------------------------------------------


def test_an_error_body_in_an_unsupported_encoding_is_ignored(raw_endpoint, tenant):
    body = json.dumps({"error": "quota_exceeded", "error_description": "never read"}).encode()
    raw_endpoint(
        http(
            "401 Unauthorized",
            {
                "Content-Type": "application/json",
                "Content-Encoding": "br",
                "Content-Length": str(len(body)),
            },
            body,
        )
    )
    with pytest.raises(InvalidClientError) as excinfo:
        get_token(tenant)
    assert excinfo.value.status == 401
    assert excinfo.value.error == "" and excinfo.value.error_description == ""


def test_an_error_body_cut_by_the_deadline_is_classified_by_its_status(raw_endpoint, tenant):
    body = json.dumps({"error": "invalid_scope", "error_description": "x" * 200}).encode()
    raw_endpoint(
        http(
            "403 Forbidden",
            {"Content-Type": "application/json", "Content-Length": str(len(body))},
            body,
        ),
        drip=True,  # one byte every 0.2 s: the 1 s deadline cuts it
    )
    with pytest.raises(InvalidClientError) as excinfo:  # by status, not the unread "invalid_scope"
        get_token(tenant)
    assert excinfo.value.status == 403 and excinfo.value.error == ""


def test_error_fields_that_are_not_text(endpoint, tenant):
    payload = {"error": 10**25, "error_description": {"nested": ["object"]}}
    endpoint.fail_next((400, {"Content-Type": "application/json"}, json.dumps(payload)))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    assert excinfo.value.error == "<a 26-digit number>"
    assert excinfo.value.error_description == ""
    assert "refused the request (400)" in str(excinfo.value)


def test_error_fields_that_are_null_or_small_numbers(endpoint, tenant):
    payload = {"error": None, "error_description": 42}
    endpoint.fail_next((400, {"Content-Type": "application/json"}, json.dumps(payload)))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    assert excinfo.value.error == "" and excinfo.value.error_description == "42"


def test_an_error_answer_that_is_not_json(endpoint, tenant):
    endpoint.fail_next((400, {"Content-Type": "text/plain"}, "Bad Request"))
    with pytest.raises(TokenRequestError) as excinfo:
        get_token(tenant)
    assert type(excinfo.value) is TokenRequestError
    assert "answered 400 with text/plain, not JSON" in str(excinfo.value)


# --- rate limits --------------------------------------------------------------------------------


def test_a_short_retry_after_on_the_last_attempt_is_not_waited_for(endpoint, tenant, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TOKEN_REQUEST_RETRIES": 0}
    # 0.1 s is within MAX_RETRY_AFTER (0.2 s in the test settings): waited for if a retry is left.
    endpoint.fail_next(auth0_error(429, "too_many_requests", "slow down", **{"Retry-After": "0.1"}))
    with pytest.raises(RateLimitedError) as excinfo:
        get_token(tenant)
    assert excinfo.value.retry_after == 0.1
    assert endpoint.count == 1


def test_a_short_retry_after_is_waited_for_once_when_a_retry_is_left(endpoint, tenant, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TOKEN_REQUEST_RETRIES": 1}
    endpoint.fail_next(auth0_error(429, "too_many_requests", "slow down", **{"Retry-After": "0.1"}))
    assert get_token(tenant).value == endpoint.issued[-1]
    assert endpoint.count == 2


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("Mon, 01 Jan 2001 00:00:00 -0000", 0.0),  # "-0000": no zone given, read as UTC
        ("Fri, 31 Dec 9999 23:59:59 -0000", MAX_WAIT),
    ],
)
def test_retry_after_dates_without_a_zone_are_read_as_utc(date, expected):
    assert rate_limit_wait({"Retry-After": date}) == (expected, "")


def test_retry_after_date_without_a_zone_gives_the_remaining_seconds():
    soon = time.time() + 600
    date = time.strftime("%a, %d %b %Y %H:%M:%S -0000", time.gmtime(soon))
    wait, _ = rate_limit_wait({"Retry-After": date})
    assert wait is not None and 590 <= wait <= 600


# --- an HTTP proxy ------------------------------------------------------------------------------


def test_token_request_through_an_http_proxy(settings, monkeypatch):
    tenant = make_tenant()
    credential = make_credential(tenant)
    with FakeGetpaid() as proxy:  # the fake answers absolute-form requests like a proxy would
        proxy.register_client(credential.client_id, "s3cret-value")
        for name in (
            "NO_PROXY",
            "no_proxy",
            "ALL_PROXY",
            "all_proxy",
            "HTTPS_PROXY",
            "https_proxy",
        ):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        # A host that does not resolve: only the proxy can answer for it.
        settings.GETPAID_AUTH = {
            **settings.GETPAID_AUTH,
            "TOKEN_URL": "http://auth.getpaid.invalid/oauth/token",
        }
        token = get_token(tenant)
        assert proxy.token_request_count(credential.client_id) == 1
        claims = proxy.verify_token(token.value)
    assert claims["azp"] == credential.client_id
