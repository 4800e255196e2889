"""token -> request: ``get_session(tenant)`` and the ``requests.Session`` it returns.

A ``GetpaidSession`` resolves relative URLs against the environment's API URL, refuses
to send its token anywhere else, applies a default timeout and a versioned User-Agent,
and shares one connection pool per process, so creating a session per view is cheap.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import requests
from django.views.decorators.debug import sensitive_variables
from requests.adapters import HTTPAdapter
from requests.exceptions import UnrewindableBodyError
from requests.utils import rewind_body

from . import service
from .conf import getpaid_settings
from .exceptions import ForeignHostError, GetpaidAuthConfigurationError, GetpaidAuthError
from .service import CredentialSnapshot, TenantRef
from .tokens import AccessToken
from .user_agent import USER_AGENT

logger = logging.getLogger("django_getpaid_auth.session")

# One pool per process for all sessions (urllib3 pools are thread-safe).
_shared_adapter = HTTPAdapter(pool_connections=32, pool_maxsize=64)
_SHARED_MOUNTS = (("https://", _shared_adapter), ("http://", _shared_adapter))


class GetpaidBearerAuth(requests.auth.AuthBase):
    """Adds the tenant's current token; on a 401 renews it and retries once.

    Public, for callers who keep their own ``requests.Session`` (or use
    ``requests.get(..., auth=...)``)::

        session.auth = GetpaidBearerAuth("acme", "sandbox")

    The token is sent only to the environment's API host and ``ALLOWED_API_HOSTS``
    (``ForeignHostError`` otherwise), just as with ``GetpaidSession``; relative URLs,
    the default timeout and the User-Agent are ``GetpaidSession``'s, not the auth's.

    The retry resends the request only if its body can be sent again: no body, bytes or
    str, or a file-like object that can seek back to where it started. A generator,
    iterator or non-seekable stream has been consumed by the first attempt, so the 401 is
    returned instead (the rejected token is still dropped: the next call gets a new one).

    Refetch pause: when a freshly fetched token is rejected too, the credential itself is
    refused (not just an old token), and for ``GETPAID_AUTH["UNAUTHORIZED_REFETCH_PAUSE"]``
    seconds every 401 is returned as is, without dropping the token or fetching a new one
    (Auth0's rate limit and quota). "Freshly fetched" means a token that replaced a
    rejected one: the token the retry sent, or, when the 401 could not be retried, a
    token other than the rejected one obtained after the rejection, within the pause
    window. A retry that is accepted ends that window. Rejections and the pause live in
    the shared cache, so all processes observe them; a changed credential starts afresh.

    A redirect keeps the token only to a URL that may receive it (see ``redirected``).
    """

    def __init__(self, tenant: TenantRef, environment: str | None) -> None:
        self.tenant = tenant
        self.environment = environment

    def __repr__(self) -> str:
        return f"<GetpaidBearerAuth tenant={self.tenant!r} environment={self.environment!r}>"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        snapshot, token = service.current_token(self.tenant, self.environment)
        _apply(request, snapshot, token)
        request._getpaid_auth = self  # type: ignore[attr-defined]
        # types-requests leaves register_hook unannotated.
        request.register_hook("response", self._retry_on_401)  # type: ignore[no-untyped-call]
        return request

    def redirected(
        self, request: requests.PreparedRequest, previous: requests.PreparedRequest
    ) -> None:
        """Authenticate a redirect's new request: our token only if its URL may receive it.

        ``requests`` copies the previous request's headers and strips Authorization only
        when the host, port or scheme changes; this applies the current token to any URL
        ``_require_allowed_host`` accepts (another allowed host included) and removes it
        from any other, so the 401 retry works after a redirect and never leaks.
        """
        snapshot, token = service.current_token(self.tenant, self.environment)
        if _refusal(request.url or "", snapshot) is not None:
            ours = {token.authorization}
            previous_token = getattr(previous, "_getpaid_token", None)
            if previous_token is not None:
                ours.add(previous_token.authorization)
            if request.headers.get("Authorization") in ours:
                del request.headers["Authorization"]
            return
        _apply(request, snapshot, token)
        request._getpaid_auth = self  # type: ignore[attr-defined]
        if getattr(previous, "_getpaid_retried", False):
            request._getpaid_retried = True  # type: ignore[attr-defined]  # one retry a call

    def _retry_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401 or getattr(response.request, "_getpaid_retried", False):
            return response
        return self._after_401(response, **kwargs)

    @sensitive_variables()  # the retry's frames (urllib3's) hold the new token
    def _after_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        snapshot: CredentialSnapshot | None = getattr(request, "_getpaid_snapshot", None)
        rejected: AccessToken | None = getattr(request, "_getpaid_token", None)
        if snapshot is None or rejected is None:
            return response  # not sent with our token (e.g. a redirect to another host)
        if not service.may_refetch_after_401(snapshot, rejected):
            return response
        service.forget_if_current(snapshot, rejected)
        send = getattr(getattr(response, "connection", None), "send", None)
        if send is None or not _rewind_body(request):
            return response  # cannot resend it: the caller gets the 401, the next call a new token
        snapshot, token = service.current_token(self.tenant, self.environment)
        retry = request.copy()
        _apply(retry, snapshot, token)
        retry._getpaid_auth = self  # type: ignore[attr-defined]
        retry._getpaid_retried = True  # type: ignore[attr-defined]
        response.content  # noqa: B018  (drain so the connection can be reused)
        response.close()
        try:
            new_response: requests.Response = send(retry, **kwargs)
        except (requests.RequestException, GetpaidAuthError) as exc:
            raise _without_frames_below(exc)  # noqa: B904  (the same exception, trimmed)
        new_response.history.append(response)
        new_response.request = retry
        if new_response.status_code == 401:
            service.replacement_rejected(snapshot, token)
        else:
            service.replacement_accepted(snapshot)
        return new_response


# --- 401: replay the body, pause refetching ----------------------------------------------

_REPLAYABLE_BODIES = (bytes, str, bytearray, memoryview)


def _rewind_body(request: requests.PreparedRequest) -> bool:
    """Make the body ready to be sent again; False if it cannot be (consumed for good).

    ``requests`` records a file body's position before sending (``_body_position``) and
    rewinds it for redirects; we rewind it the same way for the retry.
    """
    body = request.body
    if body is None or isinstance(body, _REPLAYABLE_BODIES):
        return True
    if getattr(request, "_body_position", None) is None:
        return False  # generator, iterator or a stream without tell()
    try:
        rewind_body(request)
    except (UnrewindableBodyError, ValueError):  # tell() failed earlier, seek fails, closed
        return False
    return True


# --- where a token may go ------------------------------------------------------------------

_DEFAULT_PORTS = {"https": 443, "http": 80}
# (API URL, allowed hosts) -> {(hostname, port or None for "the scheme's default")}
_endpoints_cache: dict[tuple[str, frozenset[str]], frozenset[tuple[str, int | None]]] = {}


def _apply(
    request: requests.PreparedRequest, snapshot: CredentialSnapshot, token: AccessToken
) -> None:
    _require_allowed_host(request.url or "", snapshot)
    request.headers["Authorization"] = token.authorization
    request._getpaid_snapshot = snapshot  # type: ignore[attr-defined]
    request._getpaid_token = token  # type: ignore[attr-defined]


def _require_allowed_host(url: str, snapshot: CredentialSnapshot) -> None:
    refusal = _refusal(url, snapshot)
    if refusal is not None:
        raise ForeignHostError(refusal)


def _endpoints(snapshot: CredentialSnapshot) -> frozenset[tuple[str, int | None]]:
    key = (snapshot.api_url, snapshot.allowed_hosts)
    endpoints = _endpoints_cache.get(key)
    if endpoints is None:
        parsed = set()
        for entry in snapshot.allowed_hosts:
            parts = urlsplit(f"//{entry}")
            try:
                port = parts.port
            except ValueError:
                raise GetpaidAuthConfigurationError(
                    f"Invalid host {entry!r}: the port must be a number from 0 to 65535. Fix "
                    'GETPAID_AUTH["ALLOWED_API_HOSTS"] or the environment\'s API_URL '
                    f"({snapshot.api_url})."
                ) from None
            parsed.add(((parts.hostname or "").lower(), port))
        endpoints = _endpoints_cache[key] = frozenset(parsed)
    return endpoints


def _refusal(url: str, snapshot: CredentialSnapshot) -> str | None:
    """Why ``url`` may not receive the token, or None if it may.

    A host listed without a port (in API_URL or ALLOWED_API_HOSTS) accepts only the
    scheme's default port (443 for https, 80 for http); another port must be listed as
    host:port.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    netloc = parts.netloc.lower()
    if scheme != "https" and scheme != snapshot.api_scheme:
        return (
            f"Refusing to send a getpaid token over {scheme}:// ({netloc}): the API is "
            f"configured as {snapshot.api_scheme}://, so use https or a relative URL."
        )
    endpoints = _endpoints(snapshot)  # (cached) also validates the configured hosts
    if netloc in snapshot.allowed_hosts:
        return None  # listed as is: the host (default port) or host:port (the warm path)
    hostname = (parts.hostname or "").lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    port = parts.port  # requests refuses a URL with an invalid port before auth runs
    if port is None:
        port = default_port
    if (hostname, port) in endpoints or (port == default_port and (hostname, None) in endpoints):
        return None
    allowed = ", ".join(sorted(snapshot.allowed_hosts))
    if any(host == hostname for host, _ in endpoints):
        return (
            f"Refusing to send a getpaid token to {scheme}://{netloc}: port {port} is not "
            f"allowed (only {allowed} may receive it; a host without a port means port "
            f"{default_port} for {scheme}). Use a relative URL, or add "
            f'"{hostname}:{port}" to GETPAID_AUTH["ALLOWED_API_HOSTS"].'
        )
    return (
        f"Refusing to send a getpaid token to {scheme}://{netloc}: only {allowed} may "
        "receive it. Use a relative URL, or add the host to "
        'GETPAID_AUTH["ALLOWED_API_HOSTS"].'
    )


def _without_frames_below(exc: BaseException) -> BaseException:
    """``exc`` with the tracebacks of it and its causes cut below the catching frame.

    The frames of requests, urllib3 and http.client hold the request's headers (the
    Authorization header) and raw bytes as local variables; a traceback rendered with
    locals (Django's DEBUG page, Sentry, ...) would show the token. The exception's type,
    message, ``request`` and ``response`` are kept. Exceptions that were raised elsewhere
    (a caller's exception being handled when the call started) keep their traceback.
    """
    tb = exc.__traceback__
    if tb is None:
        return exc
    frames = {tb.tb_frame}  # the frame that caught exc: everything past it is below
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        if tb is not None:
            if tb.tb_frame not in frames:
                break  # raised outside this call: not ours to cut
            while tb is not None:
                frames.add(tb.tb_frame)
                tb = tb.tb_next
            current.__traceback__ = None
        current = current.__cause__ if current.__cause__ is not None else current.__context__
    return exc


class GetpaidSession(requests.Session):
    """A ``requests.Session`` authenticated for one tenant's getpaid environment."""

    def __init__(
        self, snapshot: CredentialSnapshot, tenant: TenantRef, environment: str | None
    ) -> None:
        super().__init__()
        # One pool per process: mounting it replaces the two adapters requests just made
        # (benchmarks/RESULTS.md, section 5: doing without them saves less
        # than a warm request's noise, so the ordinary way wins).
        for prefix, adapter in _SHARED_MOUNTS:
            self.mount(prefix, adapter)
        self.tenant = tenant
        self.environment = snapshot.environment
        self.api_url = snapshot.api_url
        self.headers["User-Agent"] = USER_AGENT
        self.auth = GetpaidBearerAuth(tenant, environment)

    def __repr__(self) -> str:
        return f"<GetpaidSession tenant={self.tenant!r} environment={self.environment!r}>"

    # Django's error reports (SafeExceptionReporterFilter, active only when DEBUG is False)
    # hide the local variables of every frame below a @sensitive_variables() function:
    # those of requests, urllib3 and http.client hold the Authorization header. Errors of
    # requests and of this package also lose the frames below (_without_frames_below), so
    # reports that show every frame's locals (the DEBUG page, Sentry) cannot show it either.
    @sensitive_variables()
    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if isinstance(url, bytes):
            url = url.decode()
        if not urlsplit(url).scheme:
            url = f"{self.api_url}/{url.lstrip('/')}"
        kwargs.setdefault("timeout", getpaid_settings.typed.api_timeout)
        try:
            return super().request(method, url, *args, **kwargs)
        except (requests.RequestException, GetpaidAuthError) as exc:
            raise _without_frames_below(exc)  # noqa: B904  (the same exception, trimmed)

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        """On a redirect: requests' rules (strip Authorization across hosts, .netrc), then
        our token again if the new URL may receive it (see GetpaidBearerAuth.redirected)."""
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]  # no stub types
        previous = response.request
        auth = getattr(previous, "_getpaid_auth", None)
        if isinstance(auth, GetpaidBearerAuth):
            auth.redirected(prepared_request, previous)

    def close(self) -> None:
        """Keep the process-wide pool open; only this session's state is dropped."""
        self.adapters.clear()


def get_session(tenant: TenantRef | None = None, environment: str | None = None) -> GetpaidSession:
    """A session authenticated for ``tenant`` in ``environment`` ("live" or "sandbox").

    ``tenant`` is a tenant instance or its key string; ``None`` means the current tenant
    (``GETPAID_AUTH["TENANT_RESOLVER"]``), resolved now: the session keeps that tenant.
    With ``environment`` omitted the tenant's only active credential is used. Warm calls
    run no SQL.
    """
    tenant = service.tenant_or_current(tenant)
    snapshot = service.credential_for(tenant, environment)
    return GetpaidSession(snapshot, tenant, environment)
