"""GetpaidSession hardening: body replay on the 401 retry, redirects, the refetch pause,
the port rule, and no token in Django's error reports."""

from __future__ import annotations

import io
import os
import socket
import sys
import uuid

import pytest
import requests
import responses
from django.http import HttpResponse
from django.test import Client
from django.urls import path
from django.views.debug import ExceptionReporter

from django_getpaid_auth import credentials, get_session, get_token, service
from django_getpaid_auth.exceptions import ForeignHostError, GetpaidAuthConfigurationError
from django_getpaid_auth.testing import FakeGetpaid
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

API = "https://api.sandbox.getpaid.test"
BODY = b'{"first": 2}'  # the fake answers 2 payments for it, 3 for an empty body
SHORT = (2.0, 2.0)  # a retry that declares a body it does not send fails fast, not hangs


def idempotency() -> dict[str, str]:
    return {"Getpaid-Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- real HTTP: the fake getpaid server, recording the bodies the API receives ----------


class RecordingFake(FakeGetpaid):
    def __init__(self) -> None:
        super().__init__()
        self.api_bodies: list[bytes] = []

    def _handle_api(self, handler, path, body):
        with self._lock:
            self.api_bodies.append(body)
        super()._handle_api(handler, path, body)


@pytest.fixture
def fake_getpaid():  # overrides the plugin's: fake_getpaid_settings points at this one
    with RecordingFake() as fake:
        yield fake


@pytest.fixture
def tenant(fake_getpaid_settings, canary):
    tenant = make_tenant(slug="hard")
    make_credential(tenant, client_id="hard-client", client_secret=canary)
    fake_getpaid_settings.register_client("hard-client", canary)
    return tenant


def revoked_token(tenant, fake) -> str:
    """The tenant's cached token, revoked: the API answers 401 to it once."""
    token = get_token(tenant).value
    fake.revoke_tokens()
    return token


@pytest.mark.parametrize("kind", ["bytes", "bytesio", "bytesio_at_offset", "file"])
def test_401_retry_sends_the_whole_body_again(tenant, fake_getpaid_settings, kind, tmp_path):
    fake = fake_getpaid_settings
    revoked_token(tenant, fake)
    if kind == "bytes":
        body = BODY
    elif kind == "bytesio":
        body = io.BytesIO(BODY)
    elif kind == "bytesio_at_offset":  # the body starts where the stream was when sent
        body = io.BytesIO(b"ignored" + BODY)
        body.seek(len(b"ignored"))
    else:
        (tmp_path / "body.json").write_bytes(BODY)
        body = (tmp_path / "body.json").open("rb")
    try:
        response = get_session(tenant).post(
            "/v2/payments/query", data=body, headers=idempotency(), timeout=SHORT
        )
    finally:
        if hasattr(body, "close"):
            body.close()
    assert [r.status_code for r in response.history] == [401]
    assert response.status_code == 200
    assert fake.api_bodies == [BODY, BODY]
    assert len(response.json()["data"]) == 2
    assert fake.token_request_count("hard-client") == 2


def _chunks():
    yield b'{"first": '
    yield b"2}"


def _pipe_reader():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, BODY)
    os.close(write_fd)
    return os.fdopen(read_fd, "rb")  # tell() fails: it cannot be rewound


@pytest.mark.parametrize("make_body", [_chunks, lambda: iter([BODY]), _pipe_reader])
def test_401_with_a_body_that_cannot_be_resent_is_returned(
    tenant, fake_getpaid_settings, make_body
):
    fake = fake_getpaid_settings
    revoked_token(tenant, fake)
    body = make_body()
    try:
        response = get_session(tenant).post(
            "/v2/payments/query", data=body, headers=idempotency(), timeout=SHORT
        )
    finally:
        if hasattr(body, "close"):
            body.close()
    assert response.status_code == 401
    assert response.history == []
    assert fake.api_bodies == [BODY]  # sent once, never replayed empty
    assert fake.token_request_count("hard-client") == 1
    # The rejected token was dropped all the same: the next call gets a new one.
    again = get_session(tenant).post(
        "/v2/payments/query", data=BODY, headers=idempotency(), timeout=SHORT
    )
    assert again.status_code == 200 and again.history == []
    assert fake.token_request_count("hard-client") == 2


def test_api_url_with_a_port_keeps_working_over_real_http(tenant, fake_getpaid_settings):
    session = get_session(tenant)
    assert session.api_url.startswith("http://127.0.0.1:")
    assert session.get("/v2/ping", timeout=SHORT).json() == {"status": "ok"}
    other = f"http://127.0.0.1:{free_port()}/sandbox/v2/ping"
    with pytest.raises(ForeignHostError, match="port"):
        session.get(other, timeout=SHORT)


# --- mocked HTTP (responses): redirects, the refetch pause, the port rule ------------------


@pytest.fixture
def sandbox_tenant():
    tenant = make_tenant()
    make_credential(tenant)
    return tenant


def api_calls(rsps, prefix: str = API) -> list:
    return [c for c in rsps.calls if c.request.url.startswith(prefix)]


def authorization(call) -> str | None:
    return call.request.headers.get("Authorization")


def test_redirect_then_401_retries_on_the_new_url(endpoint, rsps, sandbox_tenant):
    rsps.add(responses.GET, f"{API}/v2/old", status=302, headers={"Location": f"{API}/v2/new"})
    rsps.add(responses.GET, f"{API}/v2/new", status=401)
    rsps.add(responses.GET, f"{API}/v2/new", json={"ok": True})
    response = get_session(sandbox_tenant).get("/v2/old")
    assert response.status_code == 200 and response.json() == {"ok": True}
    calls = api_calls(rsps)
    assert [c.request.url for c in calls] == [f"{API}/v2/old", f"{API}/v2/new", f"{API}/v2/new"]
    first, second = endpoint.issued
    assert [authorization(c) for c in calls] == [f"Bearer {first}"] * 2 + [f"Bearer {second}"]


def test_redirect_to_a_foreign_host_sends_no_token_and_returns_its_401(
    endpoint, rsps, sandbox_tenant
):
    rsps.add(
        responses.GET, f"{API}/v2/export", status=302, headers={"Location": "https://cdn.test/f"}
    )
    rsps.add(responses.GET, "https://cdn.test/f", status=401)
    response = get_session(sandbox_tenant).get("/v2/export")
    assert response.status_code == 401
    (cdn,) = api_calls(rsps, "https://cdn.test")
    assert authorization(cdn) is None
    assert endpoint.count == 1  # a foreign 401 says nothing about our token


@pytest.mark.parametrize(
    "location",
    [
        "https://api.sandbox.getpaid.test:8443/v2/x",  # same host, another port
        "http://api.sandbox.getpaid.test/v2/x",  # downgrade to http
        "https://api.getpaid.test/v2/x",  # the other environment's host
    ],
)
def test_redirect_off_the_allowed_hosts_strips_the_token(endpoint, rsps, sandbox_tenant, location):
    rsps.add(responses.GET, f"{API}/v2/go", status=307, headers={"Location": location})
    rsps.add(responses.GET, location, body="there")
    assert get_session(sandbox_tenant).get("/v2/go").text == "there"
    (call,) = [c for c in rsps.calls if c.request.url == location]
    assert authorization(call) is None


def test_redirect_to_an_allowed_host_carries_the_token(settings, endpoint, rsps, sandbox_tenant):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ALLOWED_API_HOSTS": ["files.getpaid.test"]}
    target = "https://files.getpaid.test/report.csv"
    rsps.add(responses.GET, f"{API}/v2/report", status=302, headers={"Location": target})
    rsps.add(responses.GET, target, status=401)
    rsps.add(responses.GET, target, body="csv")
    response = get_session(sandbox_tenant).get("/v2/report")
    assert response.text == "csv"
    first, second = endpoint.issued
    calls = [c for c in rsps.calls if c.request.url == target]
    assert [authorization(c) for c in calls] == [f"Bearer {first}", f"Bearer {second}"]


def test_a_401_after_a_retry_and_a_redirect_is_returned(endpoint, rsps, sandbox_tenant):
    rsps.add(responses.GET, f"{API}/v2/a", status=401)
    rsps.add(responses.GET, f"{API}/v2/a", status=302, headers={"Location": f"{API}/v2/b"})
    rsps.add(responses.GET, f"{API}/v2/b", status=401)
    response = get_session(sandbox_tenant).get("/v2/a")
    assert response.status_code == 401
    assert endpoint.count == 2  # one retry per call, redirects included


PAUSE = 30.0  # conf.DEFAULTS["UNAUTHORIZED_REFETCH_PAUSE"]


def test_an_api_that_always_answers_401_does_not_burn_tokens(
    endpoint, rsps, sandbox_tenant, fake_clock
):
    rsps.add(responses.GET, f"{API}/v2/payments/pay_1", status=401)
    for _ in range(50):
        assert get_session(sandbox_tenant).get("/v2/payments/pay_1").status_code == 401
    assert endpoint.count == 2  # the first token and the one the retry tried
    assert len(api_calls(rsps)) == 51
    # Another process (no local state) observes the pause through the shared cache.
    service.clear_memo()
    credentials.clear_local_snapshots()
    assert get_session(sandbox_tenant).get("/v2/payments/pay_1").status_code == 401
    assert endpoint.count == 2

    fake_clock.advance(PAUSE + 1)
    response = get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert response.status_code == 401 and [r.status_code for r in response.history] == [401]
    assert endpoint.count == 3  # after the pause: one more renewal and retry
    assert get_session(sandbox_tenant).get("/v2/payments/pay_1").status_code == 401
    assert endpoint.count == 3  # ... and the pause holds again


def test_always_401_with_bodies_that_cannot_be_resent(endpoint, rsps, sandbox_tenant, fake_clock):
    rsps.add(responses.POST, f"{API}/v2/upload", status=401)
    for _ in range(50):
        response = get_session(sandbox_tenant).post("/v2/upload", data=iter([b"x"]))
        assert response.status_code == 401
    assert endpoint.count == 2  # the rejected token, then its replacement, rejected too


def test_the_pause_setting_is_read_and_zero_disables_it(
    settings, endpoint, rsps, sandbox_tenant, fake_clock
):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "UNAUTHORIZED_REFETCH_PAUSE": 5}
    rsps.add(responses.GET, f"{API}/v2/payments/pay_1", status=401)
    get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert endpoint.count == 2
    fake_clock.advance(3)
    get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert endpoint.count == 2  # paused
    fake_clock.advance(3)
    get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert endpoint.count == 3  # 6 s > 5 s: renewed and retried once more
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "UNAUTHORIZED_REFETCH_PAUSE": 0}
    for _ in range(3):
        get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert endpoint.count == 3 + 3  # no pause: each call renews once, then gives up


def test_single_revocations_still_renew_and_succeed(endpoint, rsps, sandbox_tenant, fake_clock):
    url = f"{API}/v2/payments/pay_1"
    rsps.add(responses.GET, url, status=401)
    rsps.add(responses.GET, url, json={"id": "pay_1"})
    response = get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert response.status_code == 200 and endpoint.count == 2
    # Revoked again a few seconds later (within the pause window): renewed again.
    fake_clock.advance(5)
    rsps.replace(responses.GET, url, status=401)
    rsps.add(responses.GET, url, json={"id": "pay_1"})
    response = get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert response.status_code == 200 and endpoint.count == 3


# --- the port rule ---------------------------------------------------------------------------


def test_explicit_default_port_is_the_api_host(endpoint, rsps, sandbox_tenant):
    rsps.add(responses.GET, f"{API}:443/v2/payments/pay_1", json={"id": "pay_1"})
    response = get_session(sandbox_tenant).get(f"{API}:443/v2/payments/pay_1")
    assert response.status_code == 200
    assert authorization(api_calls(rsps)[0]) == f"Bearer {endpoint.issued[0]}"


@pytest.mark.parametrize(
    "url",
    [
        "https://api.sandbox.getpaid.test:8443/v2/payments/pay_1",
        "https://api.sandbox.getpaid.test:80/v2/payments/pay_1",
    ],
)
def test_another_port_on_the_api_host_is_refused(endpoint, rsps, sandbox_tenant, url):
    rsps.add(responses.GET, url, body="x")
    with pytest.raises(ForeignHostError) as excinfo:
        get_session(sandbox_tenant).get(url)
    message = str(excinfo.value)
    port = url.split(":")[2].split("/")[0]
    assert f"port {port} is not allowed" in message
    assert f'"api.sandbox.getpaid.test:{port}"' in message and "ALLOWED_API_HOSTS" in message
    assert not [c for c in rsps.calls if c.request.url == url]


def test_allow_listed_host_and_port(settings, endpoint, rsps, sandbox_tenant):
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "ALLOWED_API_HOSTS": ["api.sandbox.getpaid.test:8443", "Files.Getpaid.test:9000"],
    }
    session = get_session(sandbox_tenant)
    for url in (f"{API}:8443/v2/x", "https://files.getpaid.test:9000/y"):
        rsps.add(responses.GET, url, body="ok")
        assert session.get(url).text == "ok"
    with pytest.raises(ForeignHostError, match="port 443 is not allowed"):
        session.get("https://files.getpaid.test/y")  # listed with a port: only that port


def test_api_url_with_a_port(settings, endpoint, rsps):
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "ENVIRONMENTS": {
            **settings.GETPAID_AUTH["ENVIRONMENTS"],
            "sandbox": {
                "AUDIENCE": "https://api.sandbox.getpaid.io",
                "API_URL": "http://127.0.0.1:8089",
            },
        },
    }
    tenant = make_tenant()
    make_credential(tenant)
    rsps.add(responses.GET, "http://127.0.0.1:8089/v2/ping", json={"status": "ok"})
    session = get_session(tenant)
    assert session.get("/v2/ping").json() == {"status": "ok"}
    for url in ("http://127.0.0.1:8090/v2/ping", "http://127.0.0.1/v2/ping"):
        with pytest.raises(ForeignHostError, match="is not allowed"):
            session.get(url)


def test_http_api_url_without_a_port_means_port_80(settings, endpoint, rsps):
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "ENVIRONMENTS": {
            **settings.GETPAID_AUTH["ENVIRONMENTS"],
            "sandbox": {"AUDIENCE": "https://api.sandbox.getpaid.io", "API_URL": "http://gp.local"},
        },
    }
    tenant = make_tenant()
    make_credential(tenant)
    rsps.add(responses.GET, "http://gp.local:80/v2/ping", json={"status": "ok"})
    session = get_session(tenant)
    assert session.get("http://gp.local:80/v2/ping").status_code == 200
    with pytest.raises(ForeignHostError, match=r"port 8000 is not allowed.*port 80 for http"):
        session.get("http://gp.local:8000/v2/ping")


def test_invalid_port_in_the_allow_list_is_a_configuration_error(settings, endpoint, rsps):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ALLOWED_API_HOSTS": ["files.test:https"]}
    tenant = make_tenant()
    make_credential(tenant)
    with pytest.raises(GetpaidAuthConfigurationError, match="ALLOWED_API_HOSTS"):
        get_session(tenant).get("/v2/ping")


# --- error reports: an unreachable API ------------------------------------------------------


def call_unreachable_api(request):
    return HttpResponse(get_session("leaky").get("/v2/ping", timeout=SHORT).text)


urlpatterns = [path("unreachable/", call_unreachable_api)]


@pytest.fixture
def unreachable_token(fake_getpaid_settings, settings, canary) -> str:
    """The token a session for tenant "leaky" sends to an API on a closed port."""
    tenant = make_tenant(slug="leaky")
    make_credential(tenant, client_id="leaky-client", client_secret=canary)
    fake_getpaid_settings.register_client("leaky-client", canary)
    environments = settings.GETPAID_AUTH["ENVIRONMENTS"]
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "ENVIRONMENTS": {
            **environments,
            "sandbox": {
                **environments["sandbox"],
                "API_URL": f"http://127.0.0.1:{free_port()}",
            },
        },
    }
    return get_token(tenant).value


def assert_no_token(report: str, token: str) -> None:
    assert token not in report
    assert f"Bearer {token}" not in report
    assert token.split(".")[2] not in report  # not even the JWT's signature


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("accept", ["text/html", "text/plain"])
def test_debug_page_of_an_unreachable_api_does_not_show_the_token(
    unreachable_token, settings, accept
):
    settings.DEBUG = True
    response = Client(raise_request_exception=False).get("/unreachable/", HTTP_ACCEPT=accept)
    assert response.status_code == 500
    page = response.content.decode()
    assert "ConnectionError" in page and "call_unreachable_api" in page  # the real report
    assert_no_token(page, unreachable_token)


def unreachable_api_exc_info():
    """exc_info of a call to the unreachable API, from a frame with no token among its locals."""
    try:
        get_session("leaky").get("/v2/ping", timeout=SHORT)
    except requests.ConnectionError:
        return sys.exc_info()
    raise AssertionError("the API on a closed port answered")


@pytest.mark.parametrize("debug", [True, False])
def test_error_reports_of_an_unreachable_api_do_not_show_the_token(
    unreachable_token, settings, rf, debug
):
    settings.DEBUG = debug  # False: what is mailed to ADMINS; True: the DEBUG page
    exc_info = unreachable_api_exc_info()
    reporter = ExceptionReporter(rf.get("/unreachable/"), *exc_info)
    text, html = reporter.get_traceback_text(), reporter.get_traceback_html()
    assert "Connection refused" in text
    assert "unreachable_api_exc_info" in html and "get_session" in html  # frames are shown
    assert_no_token(text, unreachable_token)
    assert_no_token(html, unreachable_token)
    # The error itself is intact for the caller.
    assert exc_info[1].request.url.endswith("/v2/ping")


def test_a_callers_handled_exception_keeps_its_traceback(unreachable_token):
    try:
        try:
            raise KeyError("the caller's own")
        except KeyError:
            get_session("leaky").get("/v2/ping", timeout=SHORT)
    except requests.ConnectionError as exc:
        chain = []
        current: BaseException | None = exc
        while current is not None:
            chain.append(current)
            current = current.__cause__ or current.__context__
    callers = [e for e in chain if isinstance(e, KeyError)]
    assert callers and callers[0].__traceback__ is not None
    assert sys.exc_info() == (None, None, None)


# --- the pause against a hostile cache, and a save ends it -------------------------------


def test_saving_the_credential_ends_the_pause(
    endpoint, rsps, sandbox_tenant, fake_clock, django_capture_on_commit_callbacks
):
    url = f"{API}/v2/payments/pay_1"
    rsps.add(responses.GET, url, status=401)
    for _ in range(3):
        get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert endpoint.count == 2  # paused
    credential = sandbox_tenant.getpaid_credentials.get()
    with django_capture_on_commit_callbacks(execute=True):
        credential.save()  # e.g. after fixing the client's API grant in getpaid
    rsps.replace(responses.GET, url, status=401)
    rsps.add(responses.GET, url, json={"id": "pay_1"})
    response = get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert response.status_code == 200 and endpoint.count == 4


@pytest.mark.parametrize(
    "planted",
    [
        {"paused_until": "soon", "rejected_at": 1, "fingerprint": "x"},
        {"paused_until": None},
        {"rejected_at": 10**400, "paused_until": 0.0, "fingerprint": "x"},
        {"rejected_at": 0.0, "paused_until": float("inf"), "fingerprint": "x"},
        {"rejected_at": 0.0, "paused_until": 1.6e10, "fingerprint": "x"},
        "junk",
    ],
    ids=["text", "none", "huge-int", "inf", "year-2477", "not-a-dict"],
)
def test_garbage_under_the_pause_key_neither_crashes_nor_pauses(
    endpoint, rsps, sandbox_tenant, planted
):
    from django_getpaid_auth import cache_backend

    snapshot = credentials.resolve(sandbox_tenant)
    cache_backend.set(snapshot.cache_key("unauthorized"), planted, timeout=600)
    url = f"{API}/v2/payments/pay_1"
    rsps.add(responses.GET, url, status=401)
    rsps.add(responses.GET, url, json={"id": "pay_1"})
    response = get_session(sandbox_tenant).get("/v2/payments/pay_1")
    assert response.status_code == 200 and endpoint.count == 2


def test_bearer_auth_is_public_and_works_on_a_plain_session(endpoint, rsps, sandbox_tenant):
    from django_getpaid_auth import GetpaidBearerAuth

    rsps.add(responses.GET, f"{API}/v2/payments/pay_1", json={"id": "pay_1"})
    plain = requests.Session()
    plain.auth = GetpaidBearerAuth(sandbox_tenant, None)
    assert plain.get(f"{API}/v2/payments/pay_1", timeout=5).json() == {"id": "pay_1"}
    assert authorization(api_calls(rsps)[0]) == f"Bearer {endpoint.issued[0]}"
    with pytest.raises(ForeignHostError):
        plain.get("https://evil.example/steal", timeout=5)
