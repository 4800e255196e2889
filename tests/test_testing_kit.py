"""Tests of the shipped test kit's ``responses`` helpers and of the fake's parts on their own.

The package's own tests use :class:`~django_getpaid_auth.testing.TokenEndpoint`, so its
promises (counting, a new JWT per call, scripted answers, expiry on the package's clock,
the configured token URL) are pinned down here rather than trusted.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

import django_getpaid_auth.testing as kit
from django_getpaid_auth.testing import (
    LIVE_AUDIENCE,
    SANDBOX_AUDIENCE,
    TokenEndpoint,
    auth0_error,
    decode_jwt,
    mock_token_endpoint,
)
from django_getpaid_auth.testing.api import ApiEmulation
from django_getpaid_auth.testing.token_server import FakeTokenServer

URL = "https://auth.kit.test/oauth/token"
REPO_ROOT = Path(__file__).resolve().parents[1]


def post(body: dict | None = None, **kwargs) -> requests.Response:
    return requests.post(URL, json=body if body is not None else {}, timeout=5, **kwargs)


# --------------------------------------------------------------------------- TokenEndpoint


def test_token_endpoint_counts_and_mints_a_new_jwt_per_call(rsps) -> None:
    endpoint = TokenEndpoint(rsps, token_url=URL, expires_in=900)
    answers = [post({"client_id": "c1", "audience": SANDBOX_AUDIENCE}).json() for _ in range(3)]
    assert endpoint.count == 3 == endpoint.response.call_count == len(endpoint.requests)
    tokens = [a["access_token"] for a in answers]
    assert tokens == endpoint.issued and len(set(tokens)) == 3
    assert {a["expires_in"] for a in answers} == {900}
    assert {a["token_type"] for a in answers} == {"Bearer"}
    header, claims = decode_jwt(tokens[0])
    assert header["alg"] == "HS256"
    assert claims["sub"] == "c1@clients" and claims["azp"] == "c1"
    assert claims["aud"] == SANDBOX_AUDIENCE
    assert [decode_jwt(t)[1]["n"] for t in tokens] == [1, 2, 3]


def test_token_endpoint_expiry_follows_the_package_clock(rsps, fake_clock) -> None:
    fake_clock.current = 1_000_000.0
    endpoint = TokenEndpoint(rsps, token_url=URL, expires_in=600)
    first = decode_jwt(post().json()["access_token"])[1]
    fake_clock.advance(5000)
    second = decode_jwt(post().json()["access_token"])[1]
    assert (first["iat"], first["exp"]) == (1_000_000, 1_000_600)
    assert (second["iat"], second["exp"]) == (1_005_000, 1_005_600)
    # jwt_exp_offset makes the JWT's exp disagree with expires_in on purpose
    endpoint.jwt_exp_offset = 60
    answer = post().json()
    assert answer["expires_in"] == 600
    assert decode_jwt(answer["access_token"])[1]["exp"] == 1_005_060


def test_token_endpoint_scripted_answers_come_first_then_tokens_again(rsps) -> None:
    endpoint = TokenEndpoint(rsps, token_url=URL)
    endpoint.fail_next(
        auth0_error(429, "too_many_requests", "slow down", **{"Retry-After": "3"}),
        lambda: (503, {}, "down"),
    )
    first, second, third = post(), post(), post()
    assert (first.status_code, first.headers["Retry-After"]) == (429, "3")
    assert first.headers["Content-Type"] == "application/json"
    assert first.json() == {"error": "too_many_requests", "error_description": "slow down"}
    assert (second.status_code, second.text) == (503, "down")
    assert third.status_code == 200 and third.json()["access_token"] == endpoint.issued[0]
    assert endpoint.count == 3 and len(endpoint.issued) == 1 and endpoint.script == []


def test_token_endpoint_scripted_exception_reaches_the_client(rsps) -> None:
    endpoint = TokenEndpoint(rsps, token_url=URL)
    endpoint.fail_next(lambda: (200, {}, requests.ConnectionError("reset by peer")))
    with pytest.raises(requests.ConnectionError, match="reset by peer"):
        post()
    assert endpoint.count == 1 and endpoint.issued == []


def test_token_endpoint_fixed_answer_and_scope(rsps) -> None:
    endpoint = TokenEndpoint(rsps, token_url=URL, answer=auth0_error(401, "access_denied", "no"))
    assert [post().status_code for _ in range(2)] == [401, 401]
    rsps.reset()
    echoing = TokenEndpoint(rsps, token_url=URL)
    assert post({"scope": "accounts:read"}).json()["scope"] == "accounts:read"
    rsps.reset()
    fixed = TokenEndpoint(rsps, token_url=URL, scope="payments:read")
    answer = post({"scope": "accounts:read"}).json()
    assert answer["scope"] == "payments:read"
    assert decode_jwt(answer["access_token"])[1]["scope"] == "payments:read"
    assert (endpoint.count, echoing.count, fixed.count) == (2, 1, 1)


def test_token_endpoint_reads_json_form_and_basic_client_ids(rsps) -> None:
    endpoint = TokenEndpoint(rsps, token_url=URL)
    post({"client_id": "json-client"})
    requests.post(URL, data={"client_id": "form-client", "audience": LIVE_AUDIENCE}, timeout=5)
    basic = base64.b64encode(b"basic%20client:secret").decode()
    requests.post(URL, data={}, headers={"Authorization": f"Basic {basic}"}, timeout=5)
    assert endpoint.client_ids() == ["json-client", "form-client", "basic client"]
    assert decode_jwt(endpoint.issued[2])[1]["sub"] == "basic client@clients"


def test_token_endpoint_defaults_to_the_configured_token_url(rsps, settings) -> None:
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TOKEN_URL": URL}
    endpoint = TokenEndpoint(rsps)
    assert endpoint.token_url == URL
    assert post().status_code == 200 and endpoint.count == 1


def test_token_endpoint_delay_lets_requests_overlap(rsps) -> None:
    endpoint = TokenEndpoint(rsps, token_url=URL, delay=0.3)
    threads = [threading.Thread(target=post) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    elapsed = time.monotonic() - started
    assert endpoint.count == 4 and len(set(endpoint.issued)) == 4
    assert 0.3 <= elapsed < 1.0  # four sequential delays would take 1.2 s


def test_mock_token_endpoint_is_a_token_endpoint(rsps) -> None:
    mocked = mock_token_endpoint(rsps, token_url=URL, expires_in=120)
    answer = post({"client_id": "cid"}).json()
    assert mocked.call_count == 1
    assert answer["scope"] == "payments:read" and answer["expires_in"] == 120
    assert decode_jwt(answer["access_token"])[1]["aud"] == LIVE_AUDIENCE  # no audience sent
    assert post().headers["Cache-Control"] == "no-store"


def test_auth0_error_shape() -> None:
    status, headers, body = auth0_error(400, "invalid_request", "bad", **{"X-Trace": "t"})
    assert status == 400
    assert headers == {"Content-Type": "application/json", "X-Trace": "t"}
    assert json.loads(body) == {"error": "invalid_request", "error_description": "bad"}


def test_lazy_exports_are_the_helper_module_objects() -> None:
    from django_getpaid_auth.testing import responses_helper

    assert kit.TokenEndpoint is responses_helper.TokenEndpoint
    assert kit.auth0_error is responses_helper.auth0_error
    assert {"TokenEndpoint", "auth0_error", "mock_token_endpoint"} <= set(kit.__all__)


def test_token_endpoint_without_responses_fails_only_when_used() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["responses"] = None  # make `import responses` fail
        import django_getpaid_auth.testing as t
        endpoint_class, error = t.TokenEndpoint, t.auth0_error
        assert error(401, "a", "b")[0] == 401  # needs nothing
        try:
            endpoint_class(object(), token_url="http://127.0.0.1:9/oauth/token")
        except ImportError as exc:
            assert "django-getpaid-auth[testing]" in str(exc)
            print("lazy-ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy-ok"


# --------------------------------------------------------------------------- the fake's parts


def test_token_server_runs_alone() -> None:
    with FakeTokenServer(token_lifetime=60) as server:
        server.register_client("alone", "secret")
        answer = requests.post(
            server.token_url,
            json={
                "grant_type": "client_credentials",
                "client_id": "alone",
                "client_secret": "secret",
                "audience": LIVE_AUDIENCE,
            },
            timeout=5,
        )
        assert answer.status_code == 200 and answer.json()["expires_in"] == 60
        assert server.verify_token(answer.json()["access_token"])["azp"] == "alone"
        other = requests.get(server.url + "/live/v2/ping", timeout=5)
        assert other.status_code == 404 and other.json()["error"] == "not_found"
        assert server.token_request_count() == 1
        assert repr(server).startswith("<FakeTokenServer http://127.0.0.1:")
    assert repr(server) == "<FakeTokenServer stopped clients=1>"


def test_fake_getpaid_composes_the_api_emulation(fake_getpaid) -> None:
    assert isinstance(fake_getpaid.api, ApiEmulation)
    fake_getpaid.api_latency = 0.25
    assert fake_getpaid.api.latency == 0.25
    fake_getpaid.register_client("composed", "secret")
    assert [p["id"] for p in fake_getpaid.api.store.payments("composed")] == [
        "pay_composed_1",
        "pay_composed_2",
        "pay_composed_3",
    ]
    fake_getpaid.register_client("composed", "new-secret")  # re-registering keeps payments
    assert len(fake_getpaid.payments("composed")) == 3
    with pytest.raises(KeyError, match="register_client"):
        fake_getpaid.add_payment("nobody", {})
