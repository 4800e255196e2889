"""aget_session / GetpaidAsyncClient / GetpaidAuth against the fake getpaid over real HTTP:
relative URLs, the 401 retry with the body, refused hosts and schemes, idempotency keys,
retries, typed errors, shared pools, and no secret anywhere."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid

import httpx
import pytest

from django_getpaid_auth import GetpaidAsyncClient, GetpaidAuth, aget_session, aget_token, get_token
from django_getpaid_auth.exceptions import APINotFoundError, ForeignHostError
from django_getpaid_auth.user_agent import USER_AGENT
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tenant(fake_getpaid_settings, canary):
    tenant = make_tenant(slug="asess")
    make_credential(tenant, client_id="asess-client", client_secret=canary)
    fake_getpaid_settings.register_client("asess-client", canary)
    return tenant


def run(coro):
    return asyncio.run(coro)


def test_relative_urls_timeout_user_agent_and_one_token(tenant, fake_getpaid_settings):
    async def main():
        statuses = []
        for _ in range(10):
            client = await aget_session("asess")  # one per "view call", never closed
            response = await client.get("/v2/payments/pay_asess-client_1")
            statuses.append(response.status_code)
            assert response.json()["id"] == "pay_asess-client_1"
            assert response.request.headers["User-Agent"] == USER_AGENT
        async with await aget_session(tenant) as client:
            assert isinstance(client, GetpaidAsyncClient)
            assert client.timeout.connect is not None
            response = await client.post("/v2/payments/query", json={})
            statuses.append(response.status_code)
        client = await aget_session("asess")  # the shared pool survived the async with
        statuses.append((await client.get("/v2/payments/pay_asess-client_2")).status_code)
        return statuses

    assert run(main()) == [200] * 12
    assert fake_getpaid_settings.token_request_count("asess-client") == 1


def test_aget_session_makes_no_token_request(tenant, fake_getpaid_settings):
    run(aget_session("asess"))
    assert fake_getpaid_settings.token_requests_received() == 0


def test_clients_of_one_loop_share_the_pool(tenant, fake_getpaid_settings):
    from django_getpaid_auth import asession

    async def main():
        transports = set()
        for _ in range(5):
            client = await aget_session("asess")
            await client.get("/v2/payments/pay_asess-client_1")
            transports.add(id(client._transport._shared))
            await client.aclose()
        shared = asession._pools[asyncio.get_running_loop()]._shared
        return transports, len(shared._pool.connections)

    transports, connections = run(main())
    assert len(transports) == 1
    assert connections == 1  # one warm keep-alive connection reused by every client


def test_401_retry_resends_a_post_with_its_json_body(tenant, fake_getpaid_settings):
    first = get_token("asess")
    fake_getpaid_settings.revoke_tokens()

    async def main():
        client = await aget_session("asess")
        return await client.post("/v2/payments/query", json={"status": "paid"})

    response = run(main())
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert json.loads(response.request.content) == {"status": "paid"}
    assert response.request.headers["Authorization"] != first.authorization
    requests = [
        r for r in fake_getpaid_settings.api_requests if r["path"].endswith("/v2/payments/query")
    ]
    assert len(requests) == 2
    keys = {r["idempotency_key"] for r in requests}
    assert len(keys) == 1 and None not in keys  # the same key for the retry
    assert fake_getpaid_settings.token_request_count("asess-client") == 2


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/v2/payments",
        "http://{host}/v2/payments",
        "{scheme}://{host_no_port}:1/x",
    ],
)
def test_foreign_hosts_ports_and_downgrades_are_refused(tenant, fake_getpaid_settings, url):
    import urllib.parse

    api = urllib.parse.urlsplit(fake_getpaid_settings.api_url("sandbox"))
    url = url.format(host=api.netloc, host_no_port=api.hostname, scheme=api.scheme)

    async def main():
        client = await aget_session("asess")
        await client.get(url)

    if url.startswith("http://") and api.scheme == "http":
        pytest.skip("the fake API is plain http: there is no downgrade to refuse")
    with pytest.raises(ForeignHostError, match="Refusing to send a getpaid token"):
        run(main())
    assert fake_getpaid_settings.api_request_count() == 0


def test_http_downgrade_of_an_https_api_is_refused(tenant, settings):
    environments = dict(settings.GETPAID_AUTH["ENVIRONMENTS"])
    environments["sandbox"] = {**environments["sandbox"], "API_URL": "https://api.example.test"}
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENVIRONMENTS": environments}

    async def main():
        client = await aget_session("asess")
        await client.get("http://api.example.test/v2/payments")

    with pytest.raises(ForeignHostError, match=r"over http://"):
        run(main())


def test_post_gets_an_idempotency_key_and_retries_keep_it(tenant, fake_getpaid_settings):
    fake_getpaid_settings.fail_next_api_requests("503")
    fake_getpaid_settings.fail_next_api_requests("reset")

    async def main():
        client = await aget_session("asess")
        return await client.post("/v2/payments/query", json={})

    response = run(main())
    assert response.status_code == 200
    assert response.getpaid_attempts == 3
    keys = fake_getpaid_settings.idempotency_keys("asess-client")
    assert len(keys) == 3 and len(set(keys)) == 1


def test_own_key_is_kept_and_put_without_key_is_not_retried(tenant, fake_getpaid_settings):
    fake_getpaid_settings.fail_next_api_requests("503")
    key = str(uuid.uuid4())

    async def main():
        client = await aget_session("asess")
        put = await client.put("/v2/payments/pay_asess-client_1", json={})
        post = await client.post(
            "/v2/payments/query", json={}, headers={"getpaid-idempotency-key": key}
        )
        return put, post

    put, post = run(main())
    assert put.status_code == 503 and put.getpaid_attempts == 1
    assert post.status_code == 200
    assert fake_getpaid_settings.idempotency_keys("asess-client")[-1] == key


def test_raise_errors_gives_the_typed_errors_without_secrets(
    tenant, fake_getpaid_settings, canary, all_logs
):
    async def main():
        client = await aget_session("asess", raise_errors=True)
        try:
            await client.get("/v2/payments/pay_nope")
        finally:
            await client.aclose()

    with pytest.raises(APINotFoundError) as info:
        run(main())
    error = info.value
    assert error.status_code == 404 and error.method == "GET"
    token = get_token("asess").value
    for text in (str(error), repr(error), all_logs.text):
        assert canary not in text and token not in text


def test_getpaid_auth_on_users_own_clients(tenant, fake_getpaid_settings):
    base = fake_getpaid_settings.api_url("sandbox")
    with httpx.Client(auth=GetpaidAuth("asess"), base_url=base) as client:
        assert client.get("/v2/payments/pay_asess-client_1").status_code == 200

    async def main():
        async with httpx.AsyncClient(auth=GetpaidAuth(tenant), base_url=base) as client:
            return (await client.get("/v2/payments/pay_asess-client_1")).status_code

    assert run(main()) == 200
    assert fake_getpaid_settings.token_request_count("asess-client") == 1
    with httpx.Client(auth=GetpaidAuth("asess")) as client, pytest.raises(ForeignHostError):
        client.get("https://evil.example/")


class BrokenCache:
    """The shared cache (Redis) is down: every call fails, as in test_token_service."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("cache is down")

        return fail


def test_cache_down_calls_keep_working(tenant, fake_getpaid_settings, monkeypatch, all_logs):
    from django_getpaid_auth import cache_backend

    monkeypatch.setattr(cache_backend, "shared", lambda: BrokenCache())

    async def main():
        statuses = []
        for _ in range(5):
            client = await aget_session("asess")
            statuses.append((await client.get("/v2/payments/pay_asess-client_1")).status_code)
        return statuses

    assert run(main()) == [200] * 5
    assert fake_getpaid_settings.token_request_count("asess-client") == 1  # per-process fallback
    assert "fetching getpaid tokens per process" in all_logs.text


@pytest.mark.parametrize("flow", ["sync", "async"])
def test_one_401_retry_per_call_even_across_api_retries(tenant, fake_getpaid_settings, flow):
    """An API retry resends the same request: once its 401 retry was made, a later 401 in
    the same call is returned, not retried with yet another token (the sync rule)."""
    from django_getpaid_auth.asession import _RETRIED_401

    auth = GetpaidAuth(tenant)
    api = fake_getpaid_settings.api_url("sandbox")
    request = httpx.Request("GET", f"{api}/v2/payments/pay_1")

    def drive_sync() -> int:
        steps = auth.sync_auth_flow(request)
        sent = next(steps)
        sent.extensions = {**sent.extensions, _RETRIED_401: True}  # an earlier attempt did
        with pytest.raises(StopIteration):
            steps.send(httpx.Response(401, request=sent))
        return 1

    async def drive_async() -> int:
        steps = auth.async_auth_flow(request)
        sent = await steps.__anext__()
        sent.extensions = {**sent.extensions, _RETRIED_401: True}
        with pytest.raises(StopAsyncIteration):
            await steps.asend(httpx.Response(401, request=sent))
        return 1

    drive_sync() if flow == "sync" else run(drive_async())
    assert fake_getpaid_settings.token_request_count("asess-client") == 1


def test_tls_failures_are_not_retried_like_on_the_sync_path():
    import ssl

    from django_getpaid_auth import api_rules

    try:
        try:
            raise ssl.SSLError("handshake failed")
        except ssl.SSLError as tls:
            raise httpx.ConnectError("TLS handshake failed") from tls
    except httpx.ConnectError as exc:
        assert not api_rules.is_transport_failure(exc)
    assert api_rules.is_transport_failure(httpx.ConnectError("connection refused"))


def test_a_real_redis_that_is_down_keeps_async_calls_working(
    tenant, fake_getpaid_settings, settings, all_logs
):
    """The cache is a real RedisCache whose server does not answer (nothing listens on
    port 1): every call still succeeds, on the per-process fallback, as on the sync path."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }

    async def main():
        statuses = []
        for _ in range(5):
            client = await aget_session("asess")
            statuses.append((await client.get("/v2/payments/pay_asess-client_1")).status_code)
        token = await aget_token("asess")
        return statuses, token

    statuses, token = run(main())
    assert statuses == [200] * 5 and token.value
    assert fake_getpaid_settings.token_request_count("asess-client") == 1
    assert "fetching getpaid tokens per process" in all_logs.text


def _retry_lines(records) -> list[str]:
    """The API logger's per-retry lines, the wait (jittered) left out."""
    return [
        r.getMessage().rsplit(";", 1)[0]
        for r in records
        if r.name == "django_getpaid_auth.api" and "retrying in" in r.getMessage()
    ]


def test_each_retry_logs_the_sync_sessions_debug_line(
    tenant, fake_getpaid_settings, canary, all_logs
):
    from django_getpaid_auth import get_session

    fake_getpaid_settings.fail_next_api_requests("503")
    fake_getpaid_settings.fail_next_api_requests("503")
    assert get_session("asess").post("/v2/payments/query", json={}).status_code == 200
    sync_lines = _retry_lines(all_logs.records)
    all_logs.clear()

    async def main():
        client = await aget_session("asess")
        return await client.post("/v2/payments/query", json={})

    fake_getpaid_settings.fail_next_api_requests("503")
    fake_getpaid_settings.fail_next_api_requests("503")
    response = run(main())
    assert response.status_code == 200 and response.getpaid_attempts == 3
    async_lines = _retry_lines(all_logs.records)
    path = urllib.parse.urlsplit(fake_getpaid_settings.api_url("sandbox")).path.rstrip("/")
    assert async_lines == [
        f"getpaid API POST {path}/v2/payments/query: 503 on attempt 1",
        f"getpaid API POST {path}/v2/payments/query: 503 on attempt 2",
    ]
    assert async_lines == sync_lines
    token = get_token("asess").value
    assert canary not in all_logs.text and token not in all_logs.text


def test_a_failed_connection_is_logged_before_its_retry(tenant, fake_getpaid_settings, all_logs):
    fake_getpaid_settings.fail_next_api_requests("reset")

    async def main():
        client = await aget_session("asess")
        return await client.get("/v2/payments/pay_asess-client_1")

    assert run(main()).status_code == 200
    (line,) = _retry_lines(all_logs.records)
    path = urllib.parse.urlsplit(fake_getpaid_settings.api_url("sandbox")).path.rstrip("/")
    assert line.startswith(f"getpaid API GET {path}/v2/payments/pay_asess-client_1: ")
    assert line.endswith(" on attempt 1")


def test_clients_share_no_headers_cookies_or_hooks(tenant, fake_getpaid_settings):
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.headers.get("X-Mine", "-"))

    async def main():
        first = await aget_session("asess")
        first.headers["X-Mine"] = "first"
        first.cookies.set("mine", "first")
        first.event_hooks["request"].append(hook)
        second = await aget_session("asess")
        assert "X-Mine" not in second.headers and not second.cookies
        assert second.event_hooks == {"request": [], "response": []}
        await first.get("/v2/payments/pay_asess-client_1")
        await second.get("/v2/payments/pay_asess-client_1")
        return first, second

    first, second = run(main())
    assert seen == ["first"]  # only the first client's hook ran, with its own header
    assert first.headers["User-Agent"] == second.headers["User-Agent"] == USER_AGENT


def test_a_changed_api_timeout_reaches_new_clients(tenant, settings):
    async def timeout():
        return (await aget_session("asess")).timeout

    before = run(timeout())
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "API_TIMEOUT": (2.5, 7.5)}
    after = run(timeout())
    assert (after.connect, after.read, after.write, after.pool) == (2.5, 7.5, 7.5, 7.5)
    assert (before.connect, before.read) != (2.5, 7.5)


# Relative URLs the client merges itself must come out exactly as httpx's own merge would.
TRICKY_PATHS = [
    "/v2/payments",
    "/",
    "",
    "v2/payments",
    "/v2/pay ment?q=a b&r=é",
    "/v2/%41%zz/%2F",
    "/v2/a?next=/b?c#frag",
    "/v2/a#frag",
    "/v2/../x",
    "/../../x",
    "/./x",
    "/.hidden",
    "//evil.example/x",
    "/\\evil.example/x",
    "/@evil.example/x",
    "/:1/x",
    "/v2/é/ü?ß",
    "https://elsewhere.example/v2",
]


@pytest.mark.parametrize("api_url", ["https://api.example.test", "http://127.0.0.1:8/base/"])
def test_relative_urls_merge_exactly_as_httpx_does(tenant, settings, api_url):
    from hypothesis import given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    environments = dict(settings.GETPAID_AUTH["ENVIRONMENTS"])
    environments["sandbox"] = {**environments["sandbox"], "API_URL": api_url}
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENVIRONMENTS": environments}
    client = run(aget_session("asess"))
    plain = httpx.AsyncClient(base_url=api_url)

    def outcome(of: httpx.AsyncClient, path: str) -> str:
        try:
            return str(of.build_request("GET", path).url)
        except Exception as exc:  # both must refuse the same paths the same way
            return type(exc).__name__

    for path in TRICKY_PATHS:
        assert outcome(client, path) == outcome(plain, path), path

    @hsettings(max_examples=300, deadline=None)
    @given(st.text(max_size=30).map(lambda text: "/" + text))
    def same(path: str) -> None:
        assert outcome(client, path) == outcome(plain, path)

    same()


def test_getpaid_auth_retries_a_401_on_a_users_own_async_client(tenant, fake_getpaid_settings):
    first = get_token("asess")
    fake_getpaid_settings.revoke_tokens()
    base = fake_getpaid_settings.api_url("sandbox")

    async def main():
        async with httpx.AsyncClient(auth=GetpaidAuth(tenant), base_url=base) as client:
            return await client.post(  # a plain client adds no key: the fake wants one
                "/v2/payments/query",
                json={"status": "paid"},
                headers={"Getpaid-Idempotency-Key": str(uuid.uuid4())},
            )

    response = run(main())
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert json.loads(response.request.content) == {"status": "paid"}
    assert response.request.headers["Authorization"] != first.authorization
    assert fake_getpaid_settings.token_request_count("asess-client") == 2
