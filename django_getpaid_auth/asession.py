"""token -> request, for coroutines: ``aget_session``, ``GetpaidAsyncClient``, ``GetpaidAuth``.

The httpx counterpart of ``session``: the same host rules (``hosts``), the same
idempotency keys, retries and typed errors (``api_rules``), the same tokens (``aservice``
shares them with the sync path). Needs the ``httpx`` extra.

Connection pools are per event loop (httpx connections belong to the loop that opened
them): every client of a loop sends through that loop's one transport, so a client made
per view call reuses warm connections, and closing a client (or leaving its
``async with``) never closes the pool. A client that is never closed holds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx
from django.views.decorators.debug import sensitive_variables

from . import api_rules, aservice, clock, hosts, service
from .conf import getpaid_settings
from .exceptions import GetpaidAPIError
from .service import CredentialSnapshot, TenantRef
from .tokens import AccessToken
from .user_agent import USER_AGENT

__all__ = ["GetpaidAsyncClient", "GetpaidAuth", "aget_session"]


# Set on a request once its 401 retry was made: API retries resend the same request object,
# so a call never makes a second 401 retry (the sync session's rule).
_RETRIED_401 = "getpaid_retried_401"


class GetpaidAuth(httpx.Auth):
    """The tenant's bearer token for any ``httpx.Client`` or ``httpx.AsyncClient``::

        async with httpx.AsyncClient(auth=GetpaidAuth("acme")) as client: ...

    The sync flow uses the sync service (``get_token``'s), the async flow the async one
    (``aget_token``'s): the same token either way. The token goes only to URLs the
    credential's API may receive (``ForeignHostError`` otherwise). On a 401 the token is
    dropped if still current and the request resent once with a new one (httpx buffers
    the body for that: ``requires_request_body``), under the same refetch pause as
    ``GetpaidBearerAuth``. Relative URLs, timeouts, keys, retries and typed errors are
    ``GetpaidAsyncClient``'s, not the auth's.
    """

    requires_request_body = True

    def __init__(self, tenant: TenantRef, environment: str | None = None) -> None:
        aservice.require_httpx()
        self.tenant = tenant
        self.environment = environment

    def __repr__(self) -> str:
        return f"<GetpaidAuth tenant={self.tenant!r} environment={self.environment!r}>"

    @sensitive_variables()
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        snapshot, token = service.current_token(self.tenant, self.environment)
        _apply(request, snapshot, token)
        response = yield request
        if (
            response.status_code != 401
            or request.extensions.get(_RETRIED_401)  # one 401 retry per call, as on sync
            or not service.may_refetch_after_401(snapshot, token)
        ):
            return
        service.forget_if_current(snapshot, token)
        snapshot, token = service.current_token(self.tenant, self.environment)
        _apply(request, snapshot, token)
        request.extensions = {**request.extensions, _RETRIED_401: True}
        response = yield request
        if response.status_code == 401:
            service.replacement_rejected(snapshot, token)
        else:
            service.replacement_accepted(snapshot)

    @sensitive_variables()
    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        snapshot, token = await aservice.acurrent_token(self.tenant, self.environment)
        _apply(request, snapshot, token)
        response = yield request
        renewed = await self._arenew_after_401(request, response, snapshot, token)
        if renewed is None:
            return
        response = yield request
        await _asettle_replacement(response, *renewed)

    @sensitive_variables()
    async def _arenew_after_401(
        self,
        request: httpx.Request,
        response: httpx.Response,
        snapshot: CredentialSnapshot,
        token: AccessToken,
    ) -> tuple[CredentialSnapshot, AccessToken] | None:
        """After a 401: drop ``token`` if still current and put a new one on ``request``
        (then to be resent once); None when the answer stands. Shared by the flow above and
        ``GetpaidAsyncClient``'s fast path, so both follow one rule."""
        if (
            response.status_code != 401
            or request.extensions.get(_RETRIED_401)  # one 401 retry per call (API retries too)
            or not await aservice.amay_refetch_after_401(snapshot, token)
        ):
            return None
        await aservice.aforget_if_current(snapshot, token)
        snapshot, token = await aservice.acurrent_token(self.tenant, self.environment)
        _apply(request, snapshot, token)
        request.extensions = {**request.extensions, _RETRIED_401: True}
        return snapshot, token


async def _asettle_replacement(
    response: httpx.Response, snapshot: CredentialSnapshot, token: AccessToken
) -> None:
    """Record whether the token sent after a 401 was accepted (the refetch pause's memory)."""
    if response.status_code == 401:
        await aservice.areplacement_rejected(snapshot, token)
    else:
        await aservice.areplacement_accepted(snapshot)


def _apply(request: httpx.Request, snapshot: CredentialSnapshot, token: AccessToken) -> None:
    url = request.url
    if (url.scheme, url.netloc, url.userinfo) != _api_origin(snapshot):
        hosts.require_allowed_host(str(url), snapshot)
    request.headers["Authorization"] = token.authorization


# (API URL, allowed hosts) -> (scheme, netloc, userinfo) of the API URL as httpx reads it,
# or None when the API URL itself is refused (then every URL takes the full check).
_origins: dict[tuple[str, frozenset[str]], tuple[str, bytes, bytes] | None] = {}


def _api_origin(snapshot: CredentialSnapshot) -> tuple[str, bytes, bytes] | None:
    """The API's own origin, checked once per process: a URL with exactly this scheme,
    host, port and (empty) userinfo gets ``hosts.refusal``'s answer for the API URL without
    re-parsing its text (``refusal`` depends on nothing else of a URL)."""
    key = (snapshot.api_url, snapshot.allowed_hosts)
    try:
        return _origins[key]
    except KeyError:
        pass
    base = _base_url(snapshot.api_url)
    origin = None
    if hosts.refusal(str(base), snapshot) is None:
        origin = (base.scheme, base.netloc, base.userinfo)
    _origins[key] = origin
    return origin


# --- one pool per event loop ---------------------------------------------------------------


class _LoopTransport(httpx.AsyncBaseTransport):
    """A client's view of its loop's shared transport: closing it leaves the pool open."""

    def __init__(self, shared: httpx.AsyncHTTPTransport) -> None:
        self._shared = shared

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._shared.handle_async_request(request)

    async def aclose(self) -> None:
        """The pool is the loop's, shared by every client: never closed by one of them."""


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopTransport] = (
    weakref.WeakKeyDictionary()
)
_ssl: list[Any] = []


def _loop_transport() -> _LoopTransport:
    """The running loop's transport view, made once per loop and given to all its clients."""
    loop = asyncio.get_running_loop()
    view = _pools.get(loop)
    if view is None:
        if not _ssl:  # one SSL context per process (loading CA certificates takes ms)
            _ssl.append(httpx.create_ssl_context())
        view = _pools[loop] = _LoopTransport(
            httpx.AsyncHTTPTransport(
                verify=_ssl[0],
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=64),
            )
        )
    return view


_base_urls: dict[str, httpx.URL] = {}


def _base_url(api_url: str) -> httpx.URL:
    """The API URL parsed once per process: httpx would parse the string for every client
    (about 26 µs of the 43 µs an ``aget_session`` took, benchmarks/RESULTS.md section 6)."""
    url = _base_urls.get(api_url)
    if url is None:
        url = _base_urls[api_url] = httpx.URL(api_url.rstrip("/") + "/")
    return url


class _Unset(httpx.AsyncBaseTransport):
    """Stands in for the transport while a template is built (each client gets its loop's)."""


# (API URL, API_TIMEOUT, User-Agent) -> the attributes httpx's own __init__ gave a client
_templates: dict[tuple[Any, ...], dict[str, Any]] = {}


def _template(api_url: str) -> dict[str, Any]:
    """What every client of one API URL starts from, built once by httpx's own
    ``AsyncClient.__init__`` (base URL, timeout, default headers, ...): running that
    ``__init__`` for every ``aget_session`` was most of its cost (benchmarks/RESULTS.md
    section 6). API_TIMEOUT is part of the key, so a changed setting gives new clients
    a new template."""
    connect, read = getpaid_settings.typed.api_timeout
    key = (api_url, connect, read, USER_AGENT)
    state = _templates.get(key)
    if state is None:
        prototype = httpx.AsyncClient(
            base_url=_base_url(api_url),
            timeout=httpx.Timeout(read, connect=connect),  # writes and pool waits: read's
            headers={"User-Agent": USER_AGENT},
            transport=_Unset(),
        )
        state = _templates[key] = dict(vars(prototype))
        state["_getpaid_base"] = prototype.base_url
        state["_getpaid_base_text"] = str(prototype.base_url)
    return state


class GetpaidAsyncClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` authenticated for one tenant's getpaid environment.

    Everything ``GetpaidSession`` does, the same way: relative URLs against the API URL,
    the default ``API_TIMEOUT``, the package User-Agent, ``ForeignHostError`` for other
    hosts, ports or a downgraded scheme, the 401 retry (``GetpaidAuth``), an idempotency
    key on every POST, retries from ``api_rules`` (``API_RETRIES``, backoff, Retry-After)
    with ``getpaid_attempts`` and ``getpaid_failed_trace_ids`` on the response, and with
    ``raise_errors=True`` the same ``GetpaidAPIError`` classes. Transport errors are
    httpx's own. Use it with or without ``async with``.
    """

    _getpaid_base: httpx.URL  # the template's base URL object and its text (_merge_url)
    _getpaid_base_text: str

    def __init__(
        self,
        snapshot: CredentialSnapshot,
        tenant: TenantRef,
        environment: str | None,
        *,
        raise_errors: bool = False,
    ) -> None:
        # httpx's __init__ ran once for the template; a client is a copy of its state with
        # its own mutable parts (headers, cookies, event hooks, mounts) and its loop's pool.
        state = _template(snapshot.api_url)
        self.__dict__.update(state)
        self._headers = httpx.Headers(state["_headers"])
        self._cookies = httpx.Cookies()
        self._event_hooks = {"request": [], "response": []}
        self._mounts = dict(state["_mounts"])
        self._transport = _loop_transport()
        self._auth = GetpaidAuth(tenant, environment)
        self.tenant = tenant
        self.environment = snapshot.environment
        self.api_url = snapshot.api_url
        self.raise_errors = raise_errors

    def __repr__(self) -> str:
        return f"<GetpaidAsyncClient tenant={self.tenant!r} environment={self.environment!r}>"

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        """A relative path ("/v2/...") joined to the API URL's text and parsed once; httpx
        parses the path alone and then the merged URL again. Same result (the base ends
        in "/", so the path cannot change the host); anything else is httpx's merge."""
        if (
            isinstance(url, str)
            and url[:1] == "/"
            and url[1:2] != "/"
            and "#" not in url
            and self._base_url is self._getpaid_base
        ):
            return httpx.URL(self._getpaid_base_text + url[1:])
        return super()._merge_url(url)

    @sensitive_variables()
    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Send with the idempotency key, retries and errors described above."""
        started = time.monotonic()
        method = request.method.upper()
        # httpx headers match names in any letter case: a key is there or, for a POST, added
        has_key = api_rules.IDEMPOTENCY_HEADER in request.headers or (
            method == "POST"
            and api_rules.ensure_idempotency_key(method, request.headers) is not None
        )
        attempts = 0
        failed: list[str] = []

        def rules() -> dict[str, Any]:
            typed = getpaid_settings.typed
            return {
                "has_key": has_key,
                "retry": attempts - 1,
                "retries": typed.api_retries,
                "now": clock.now(),
                "backoff": typed.retry_backoff,
                "backoff_max": typed.retry_backoff_max,
                "max_retry_after": typed.max_retry_after,
                "jitter": random.random(),  # noqa: S311  (jitter, not a secret)
            }

        while True:
            attempts += 1
            try:
                response = await super().send(request, **kwargs)
            except httpx.HTTPError as exc:
                delay = api_rules.retry_delay(method, exc=exc, **rules())
                if delay is None or not _replayable(request):
                    exc.getpaid_attempts = attempts  # type: ignore[attr-defined]
                    exc.getpaid_failed_trace_ids = tuple(failed)  # type: ignore[attr-defined]
                    if _debug():
                        api_rules.log_call(
                            method, str(request.url), type(exc).__name__, None, attempts, started
                        )
                    raise
                if _debug():
                    api_rules.log_retry(
                        method, str(request.url), type(exc).__name__, attempts, delay
                    )
            else:
                delay = None  # an answer below 400 is never retried (status_is_retryable)
                if response.status_code >= 400:
                    delay = api_rules.retry_delay(
                        method, status=response.status_code, headers=response.headers, **rules()
                    )
                if response.history:
                    failed.extend(
                        trace
                        for earlier in response.history
                        if earlier.status_code >= 400
                        and (trace := api_rules.trace_id(earlier.headers)) is not None
                    )
                if delay is None or not _replayable(request):
                    break
                trace = api_rules.trace_id(response.headers)
                if trace is not None:
                    failed.append(trace)
                if _debug():
                    api_rules.log_retry(
                        method, str(request.url), str(response.status_code), attempts, delay
                    )
                await response.aclose()
            await asyncio.sleep(delay)
        response.getpaid_attempts = attempts  # type: ignore[attr-defined]
        response.getpaid_failed_trace_ids = tuple(failed)  # type: ignore[attr-defined]
        if _debug():
            api_rules.log_call(
                method,
                str(request.url),
                str(response.status_code),
                api_rules.trace_id(response.headers),
                attempts,
                started,
            )
        if self.raise_errors and response.status_code >= 400:
            error = await aapi_error(response)
            if error is not None:
                raise error
        return response

    @sensitive_variables()
    async def _send_handling_auth(
        self,
        request: httpx.Request,
        auth: httpx.Auth,
        follow_redirects: bool,
        history: list[httpx.Response],
    ) -> httpx.Response:
        """``GetpaidAuth``'s flow without driving an async generator per request (the
        client's own auth only; any other auth, e.g. passed per request, goes through
        httpx). Same steps, same order: token, host check, send; on a 401 the flow's own
        ``_arenew_after_401`` decides, the 401 answer is read into the history and the
        request resent once. Overrides httpx's private hook (the same signature in httpx
        0.27 and 0.28; the 401 tests drive it against the installed httpx)."""
        if type(auth) is not GetpaidAuth:
            return await super()._send_handling_auth(request, auth, follow_redirects, history)
        snapshot, token = await aservice.acurrent_token(auth.tenant, auth.environment)
        _apply(request, snapshot, token)
        response = await self._send_handling_redirects(
            request, follow_redirects=follow_redirects, history=history
        )
        if response.status_code != 401:
            return response
        try:
            renewed = await auth._arenew_after_401(request, response, snapshot, token)
            if renewed is None:
                return response
            response.history = list(history)
            await response.aread()
            history.append(response)
        except BaseException:
            await response.aclose()
            raise
        response = await self._send_handling_redirects(
            request, follow_redirects=follow_redirects, history=history
        )
        try:
            await _asettle_replacement(response, *renewed)
        except BaseException:
            await response.aclose()
            raise
        return response


def _debug() -> bool:
    """The API logger logs DEBUG: only then is a URL turned into text for a log line."""
    return api_rules.api_logger.isEnabledFor(logging.DEBUG)


def _replayable(request: httpx.Request) -> bool:
    """The body can be sent again (bytes, or a stream already read into memory)."""
    return isinstance(request.stream, httpx.ByteStream)


async def aapi_error(response: httpx.Response) -> GetpaidAPIError | None:
    """The typed error for an httpx answer (``session.api_error``'s rules), None below 400.

    At most MAX_PROBLEM_BYTES (+1) of a streamed body are read to parse the problem.
    """
    if response.status_code < 400:
        return None
    body: bytes | None
    try:
        body = response.content
    except httpx.ResponseNotRead:
        limit = api_rules.MAX_PROBLEM_BYTES
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
        except httpx.HTTPError:
            chunks = []
        await response.aclose()
        body = b"".join(chunks) if chunks else None
    request = response.request
    sent = [
        auth.partition(" ")[2].strip()
        for r in (*response.history, response)
        if (auth := r.request.headers.get("Authorization"))
    ]
    return api_rules.build_error(
        status=response.status_code,
        headers=response.headers,
        body=body,
        method=request.method,
        url=str(request.url),
        request_headers=request.headers,
        attempts=getattr(response, "getpaid_attempts", 1),
        failed_trace_ids=getattr(response, "getpaid_failed_trace_ids", ()),
        response=response,
        secrets=sent,
        now=clock.now(),
    )


async def aget_session(
    tenant: TenantRef | None = None,
    environment: str | None = None,
    *,
    raise_errors: bool = False,
) -> GetpaidAsyncClient:
    """A ``GetpaidAsyncClient`` for ``tenant`` in ``environment`` (``get_session``'s args).

    Resolves the credential now (no token request: the token is got on the first
    request). Warm calls run no SQL and never leave the event loop.
    """
    aservice.require_httpx()
    tenant = service.tenant_or_current(tenant)
    snapshot = await aservice.credential_for(tenant, environment)
    return GetpaidAsyncClient(snapshot, tenant, environment, raise_errors=raise_errors)
