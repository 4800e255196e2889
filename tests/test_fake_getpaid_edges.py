"""The shipped fake getpaid's less travelled answers: API query validation, routes and
methods, raw HTTP bodies, token request parsing, and the JWT and ``responses`` helpers.

Users' tests rely on these answers being the ones getpaid gives (422 problem documents,
405s, OAuth errors), so each is pinned down over real loopback HTTP.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from django_getpaid_auth.testing import (
    LIVE_AUDIENCE,
    FakeGetpaid,
    TokenEndpoint,
    decode_jwt,
    make_jwt,
)
from django_getpaid_auth.testing.jwt import InvalidTokenError, b64url_decode, b64url_encode

KEY = "5c255194-30ec-11ed-a261"


@pytest.fixture
def fake() -> Iterator[FakeGetpaid]:
    with FakeGetpaid() as server:
        server.register_client("client-a", "secret-a")
        yield server


def token(fake: FakeGetpaid, **extra: Any) -> str:
    body = {
        "client_id": "client-a",
        "client_secret": "secret-a",
        "audience": LIVE_AUDIENCE,
        "grant_type": "client_credentials",
        **extra,
    }
    response = requests.post(fake.token_url, json=body, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def query(fake: FakeGetpaid, body: Any, *, key: str = KEY, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {token(fake)}", "Getpaid-Idempotency-Key": key}
    url = fake.api_url("live") + "/v2/payments/query"
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return requests.post(url, data=raw, headers=headers, timeout=5)
    return requests.post(url, json=body, headers=headers, timeout=5)


def raw_request(fake: FakeGetpaid, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library fixing them up); return the answer."""
    host, port = fake.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.sendall(data)
        response = http.client.HTTPResponse(conn.sock, method="POST")
        response.begin()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- payment queries


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"type": "refunds"}, "type", "invalid_option"),
        ({"first": 0}, "first", "out_of_range"),
        ({"first": 101}, "first", "out_of_range"),
        ({"first": True}, "first", "out_of_range"),
        ({"first": "5"}, "first", "out_of_range"),
        ({"filters": ["captured"]}, "filters", "invalid_type"),
        ({"filters": {"statuses": "captured"}}, "filters.statuses", "invalid_type"),
        ({"filters": {"statuses": []}}, "filters.statuses", "invalid_type"),
        ({"filters": {"statuses": ["captured", "lost"]}}, "filters.statuses", "invalid_option"),
        ({"sorts": {"field": "amount"}}, "sorts", "invalid_type"),
        ({"sorts": [{"field": "colour", "direction": "ascending"}]}, "sorts", "invalid_option"),
        ({"sorts": [{"field": "amount", "direction": "up"}]}, "sorts", "invalid_option"),
        ({"sorts": ["amount"]}, "sorts", "invalid_option"),
        ({"after": "not a cursor!"}, "after", "invalid_cursor"),
        ({"after": base64.urlsafe_b64encode(b"page:2").decode()}, "after", "invalid_cursor"),
        ({"after": base64.urlsafe_b64encode(b"offset:-1").decode()}, "after", "invalid_cursor"),
        ({"after": base64.urlsafe_b64encode(b"offset:x").decode()}, "after", "invalid_cursor"),
    ],
)
def test_invalid_query_parameters_are_422_problems(fake, body, field, code) -> None:
    response = query(fake, body)
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("#invalid-parameters")
    assert problem["errors"] == {field: [code]}
    assert problem["instance"] == "/live/v2/payments/query"


def test_malformed_idempotency_key_is_422(fake) -> None:
    response = query(fake, {}, key="short")
    assert response.status_code == 422
    assert response.json()["errors"] == {"Getpaid-Idempotency-Key": ["invalid_format"]}


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b"null", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be an object"),
    ],
)
def test_query_bodies_that_are_not_objects_are_400(fake, raw, detail) -> None:
    response = query(fake, None, raw=raw)
    assert response.status_code == 400
    assert detail in response.json()["detail"]


def test_query_filters_by_id_reference_and_seller(fake) -> None:
    wanted = fake.add_payment(
        "client-a",
        {
            "reference": "Order-XYZ-42",
            "splits": {"accounts": [seller("Zebra Trading Ltd")]},
            "method": {"type": "bank_transfer", "display_hint": "IBAN ...42"},
        },
    )
    by_id = query(fake, {"filters": {"id": wanted["id"]}}).json()["data"]
    assert [p["id"] for p in by_id] == [wanted["id"]]
    by_reference = query(fake, {"filters": {"reference": "order-xyz"}}).json()["data"]
    assert [p["id"] for p in by_reference] == [wanted["id"]]
    by_seller = query(fake, {"filters": {"seller_legal_name": "ZEBRA"}}).json()["data"]
    assert [p["id"] for p in by_seller] == [wanted["id"]]
    nothing = query(fake, {"filters": {"reference": "no-such-order"}}).json()["data"]
    assert nothing == []
    # A payment paid without a card has no card scheme in its summary.
    assert by_id[0]["method"] == {"type": "bank_transfer", "display_hint": "IBAN ...42"}


def seller(name: str) -> dict[str, Any]:
    return {"id": f"acc_{name[:3]}", "type": "seller", "legal_name": name}


def test_query_sorts_by_seller_legal_name(fake) -> None:
    fake.add_payment("client-a", {"splits": {"accounts": [seller("aaa first")]}})
    fake.add_payment("client-a", {"splits": {"accounts": [seller("zzz last")]}})
    fake.add_payment("client-a", {"splits": {"accounts": []}})  # no seller: sorts as ""
    data = query(
        fake, {"sorts": [{"field": "seller_legal_name", "direction": "ascending"}]}
    ).json()["data"]
    names = [(p.get("seller") or {}).get("legal_name") or "" for p in data]
    assert names == sorted(names)
    assert names[0] == "" and names[-1] == "zzz last"


def test_added_payment_ids_skip_ids_already_taken(fake) -> None:
    # Three seeded payments: the next free number is 4, unless a payment already took it.
    taken = fake.add_payment("client-a", {"id": "pay_client-a_5"})
    assert taken["id"] == "pay_client-a_5"
    fourth = fake.add_payment("client-a", {})
    assert fourth["id"] == "pay_client-a_6"  # 5 payments: pay_..._5 taken, so the next one
    ids = [p["id"] for p in fake.payments("client-a")]
    assert len(ids) == len(set(ids)) == 5


# --------------------------------------------------------------------------- routes and methods


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_on_the_api_are_405(fake, method) -> None:
    response = requests.request(
        method,
        fake.api_url("live") + "/v2/ping",
        headers={"Authorization": f"Bearer {token(fake)}"},
        timeout=5,
    )
    assert response.status_code == 405
    assert response.json()["type"].endswith("#method-not-allowed")


def test_unversioned_route_refuses_a_token_for_a_foreign_audience(fake) -> None:
    foreign = fake.issue_token("client-a", "https://api.elsewhere.example", "payments:read")
    headers = {"Authorization": f"Bearer {foreign}"}
    refused = requests.get(fake.url + "/v2/ping", headers=headers, timeout=5)
    assert refused.status_code == 401
    assert "not valid for this API" in refused.json()["detail"]
    issued = fake.issue_token("client-a", LIVE_AUDIENCE, ["payments:read"])
    accepted = requests.get(
        fake.url + "/v2/ping", headers={"Authorization": f"Bearer {issued}"}, timeout=5
    )
    assert accepted.status_code == 200


def test_api_latency_reads_back_what_was_set(fake) -> None:
    assert fake.api_latency == 0.0
    fake.api_latency = 0.25
    assert fake.api_latency == 0.25 == fake.api.latency


def test_a_subclass_can_answer_with_text(fake) -> None:
    class TextApi(FakeGetpaid):
        def _handle_api(self, handler, path, body):
            handler.send(200, "héllo wörld", content_type="text/plain; charset=utf-8")

    with TextApi() as server:
        response = requests.get(server.api_url("live") + "/anything", timeout=5)
    assert response.status_code == 200
    assert response.content == "héllo wörld".encode()
    assert response.headers["Content-Length"] == str(len("héllo wörld".encode()))


# --------------------------------------------------------------------------- raw HTTP


def test_chunked_body_with_trailers_is_read_whole(fake) -> None:
    body = json.dumps(
        {
            "client_id": "client-a",
            "client_secret": "secret-a",
            "audience": LIVE_AUDIENCE,
            "grant_type": "client_credentials",
        }
    ).encode()
    half = len(body) // 2
    chunks = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:])
    )
    status, _headers, answer = raw_request(
        fake,
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-Trailer: yes\r\n\r\n",
    )
    assert status == 200, answer
    assert json.loads(answer)["token_type"] == "Bearer"
    assert fake.token_request_count("client-a") == 1


def test_unreadable_chunked_body_is_400_and_closes_the_connection(fake) -> None:
    status, headers, answer = raw_request(
        fake,
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
    )
    assert status == 400
    assert headers.get("Connection") == "close"
    assert json.loads(answer) == {"error": "invalid_request", "error_description": "Bad body"}


def test_start_twice_is_an_error_and_stop_twice_is_not() -> None:
    server = FakeGetpaid().start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    finally:
        server.stop()
    server.stop()  # already stopped: nothing to do
    with pytest.raises(RuntimeError, match="not running"):
        server.url  # noqa: B018


def test_ipv6_loopback_url_is_bracketed() -> None:
    try:
        server = FakeGetpaid(host="::1").start()
    except OSError as exc:  # pragma: no cover - host without IPv6
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        server.register_client("client-a", "secret-a")
        assert token(server)
    finally:
        server.stop()


# --------------------------------------------------------------------------- token requests


def test_token_parameters_must_be_strings(fake) -> None:
    response = requests.post(
        fake.token_url,
        json={"client_id": 5, "client_secret": "secret-a", "grant_type": "client_credentials"},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_request",
        "error_description": "Invalid parameter type: client_id",
    }


def test_body_client_id_must_match_basic_auth(fake) -> None:
    response = requests.post(
        fake.token_url,
        data={
            "client_id": "client-b",
            "grant_type": "client_credentials",
            "audience": LIVE_AUDIENCE,
        },
        auth=("client-a", "secret-a"),
        timeout=5,
    )
    assert response.status_code == 400
    assert "does not match the Authorization header" in response.json()["error_description"]


@pytest.mark.parametrize(
    ("headers", "body", "description"),
    [
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            b"grant_type",
            "Invalid form body",
        ),
        (
            {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
            b"",
            "Malformed HTTP Basic Authorization header",
        ),
        (
            {"Authorization": "Basic !!!not-base64"},
            b"",
            "Malformed HTTP Basic Authorization header",
        ),
    ],
)
def test_unparseable_token_requests_are_invalid_request(fake, headers, body, description) -> None:
    response = requests.post(fake.token_url, data=body, headers=headers, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": description}


def test_negative_fault_count_is_refused_and_faults_can_be_cleared(fake) -> None:
    with pytest.raises(ValueError, match="count must be >= 0"):
        fake.fail_next_token_requests("500", count=-1)
    fake.fail_next_token_requests("500", count=3)
    fake.clear_faults()
    assert token(fake)  # no fault served
    assert [r["status"] for r in fake.token_requests] == [200]


# --------------------------------------------------------------------------- JWT helper


def test_jwt_helper_refuses_what_it_cannot_make_or_read() -> None:
    with pytest.raises(InvalidTokenError, match="not a string"):
        b64url_decode(b"abc")  # type: ignore[arg-type]
    with pytest.raises(InvalidTokenError, match="not a string"):
        decode_jwt(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported alg 'RS256'"):
        make_jwt({"sub": "x"}, "key", alg="RS256")
    array_header = f"{b64url_encode(b'[]')}.{b64url_encode(b'{}')}.sig"
    with pytest.raises(InvalidTokenError, match="must be JSON objects"):
        decode_jwt(array_header)


def test_jwt_extra_headers_are_signed_into_the_token() -> None:
    jwt = make_jwt({"sub": "x"}, "key", kid="k1", headers={"typ": "at+jwt", "x5t": "abc"})
    header, claims = decode_jwt(jwt, "key")
    assert header == {"alg": "HS256", "typ": "at+jwt", "kid": "k1", "x5t": "abc"}
    assert claims == {"sub": "x"}


# --------------------------------------------------------------------------- responses helper


def test_token_endpoint_reads_client_ids_from_unusual_requests() -> None:
    url = "https://auth.example.test/oauth/token"
    with responses.RequestsMock() as rsps:
        endpoint = TokenEndpoint(rsps, token_url=url)
        requests.post(
            url, data="{broken json", headers={"Content-Type": "application/json"}, timeout=5
        )
        requests.post(url, headers={"Authorization": "Basic ***not-base64***"}, timeout=5)
        requests.post(
            url, data={"grant_type": "client_credentials"}, auth=("basic-id", "s"), timeout=5
        )
        requests.post(url, json={"client_id": "json-id"}, timeout=5)
    assert endpoint.client_ids() == [None, None, "basic-id", "json-id"]
    assert endpoint.count == 4
    # Tokens were still minted for the requests it could not read ("unknown" client).
    assert decode_jwt(endpoint.issued[0])[1]["azp"] == "unknown"
