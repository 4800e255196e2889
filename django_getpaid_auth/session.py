"""token -> request: ``get_session(tenant)`` and the ``requests.Session`` it returns.

A ``GetpaidSession`` resolves relative URLs against the environment's API URL, refuses
to send its token anywhere else, applies a default timeout and a versioned User-Agent,
and shares one connection pool per process, so creating a session per view is cheap.
It also gives every POST an idempotency key, retries what is safe to retry and, when
asked, raises typed errors: the rules are in ``api_rules``, applied here.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from django.views.decorators.debug import sensitive_variables
from requests.adapters import HTTPAdapter
from requests.exceptions import UnrewindableBodyError
from requests.utils import rewind_body

from . import api_rules, clock, hosts, service
from .conf import getpaid_settings
from .exceptions import GetpaidAPIError, GetpaidAuthError
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
    the default timeout, the User-Agent, idempotency keys, retries and typed errors are
    ``GetpaidSession``'s, not the auth's.

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


def _apply(
    request: requests.PreparedRequest, snapshot: CredentialSnapshot, token: AccessToken
) -> None:
    _require_allowed_host(request.url or "", snapshot)
    request.headers["Authorization"] = token.authorization
    request._getpaid_snapshot = snapshot  # type: ignore[attr-defined]
    request._getpaid_token = token  # type: ignore[attr-defined]


_require_allowed_host = hosts.require_allowed_host
_refusal = hosts.refusal


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
    """A ``requests.Session`` authenticated for one tenant's getpaid environment.

    On top of ``requests`` (the rules live in ``django_getpaid_auth.api_rules``):

    * **Idempotency keys.** A POST without a ``Getpaid-Idempotency-Key`` header (in any
      letter case) gets ``str(uuid.uuid4())``. A key you set is never replaced. The same
      key goes with the 401 retry and every retry below, so a retried POST cannot create
      a second payment. An automatic key protects only the retries inside one call: to
      retry an operation later (a task queue, a double click), pass your own key derived
      from the operation.
    * **Retries**, at most ``GETPAID_AUTH["API_RETRIES"]`` (default 2; 0 disables), after
      a jittered exponential backoff (``RETRY_BACKOFF``, ``RETRY_BACKOFF_MAX``): a
      connection failure or reset with no complete answer (even after the request was
      fully sent), a 502/503/504, or a 429 whose ``Retry-After`` is at most
      ``MAX_RETRY_AFTER`` (waited as asked) -- for GET, HEAD, OPTIONS and for requests
      with an idempotency key (every POST); a 500 only for requests with a key. Never
      another 4xx, never a timeout waiting for the answer, never PUT, PATCH or DELETE
      without a key, and never a body that cannot be sent again (a generator, an
      iterator, a stream that cannot seek).
    * **Visible attempts.** The returned response has ``getpaid_attempts`` (how many
      times the request was sent: 1 + retries; the 401 retry is not counted) and
      ``getpaid_failed_trace_ids`` (a tuple of the ``Getpaid-Trace-Id`` of earlier failed
      answers: retried ones and a retried 401). A connection error raised after the
      retries carries the same two attributes.
    * **Typed errors** with ``raise_errors=True`` (``get_session(..., raise_errors=True)``):
      a 4xx/5xx final answer raises a :class:`~django_getpaid_auth.exceptions.GetpaidAPIError`
      subclass (see :func:`api_error`). Otherwise answers are returned as ``requests``
      returns them.
    * **Logging.** Each call is logged at DEBUG on ``django_getpaid_auth.api``: method,
      path (no query string), status, trace id, attempts and elapsed milliseconds; never
      headers or bodies.
    """

    def __init__(
        self,
        snapshot: CredentialSnapshot,
        tenant: TenantRef,
        environment: str | None,
        *,
        raise_errors: bool = False,
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
        self.raise_errors = raise_errors
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

    @sensitive_variables()
    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send ``request`` with the idempotency key, retries and errors described above.

        A redirect's request (sent by ``requests`` while following a redirect) is sent
        once, as is: the retries apply to the call as a whole.
        """
        if getattr(request, "_getpaid_redirect", False):
            return super().send(request, **kwargs)
        try:
            return self._call(request, kwargs)
        except (requests.RequestException, GetpaidAuthError) as exc:
            raise _without_frames_below(exc)  # noqa: B904  (the same exception, trimmed)

    def _call(self, request: requests.PreparedRequest, kwargs: dict[str, Any]) -> requests.Response:
        started = time.monotonic()
        method = (request.method or "GET").upper()
        key = api_rules.ensure_idempotency_key(method, request.headers)
        has_key = key is not None
        typed = getpaid_settings.typed
        attempt = request
        attempts = 0
        failed: list[str] = []
        retried_401 = False
        while True:
            attempts += 1
            try:
                response = super().send(attempt, **kwargs)
            except Exception as exc:
                retried_401 = retried_401 or _used_401_retry(getattr(exc, "request", None))
                delay = api_rules.retry_delay(
                    method,
                    has_key=has_key,
                    retry=attempts - 1,
                    retries=typed.api_retries,
                    exc=exc,
                    now=clock.now(),
                    backoff=typed.retry_backoff,
                    backoff_max=typed.retry_backoff_max,
                    max_retry_after=typed.max_retry_after,
                    jitter=random.random(),  # noqa: S311  (jitter, not a secret)
                )
                if delay is None or not _rewind_body(request):
                    exc.getpaid_attempts = attempts  # type: ignore[attr-defined]
                    exc.getpaid_failed_trace_ids = tuple(failed)  # type: ignore[attr-defined]
                    api_rules.log_call(
                        method, request.url, type(exc).__name__, None, attempts, started
                    )
                    raise
                api_rules.log_retry(method, request.url, type(exc).__name__, attempts, delay)
            else:
                retried_401 = retried_401 or _used_401_retry(response.request)
                delay = api_rules.retry_delay(
                    method,
                    has_key=has_key,
                    retry=attempts - 1,
                    retries=typed.api_retries,
                    status=response.status_code,
                    headers=response.headers,
                    now=clock.now(),
                    backoff=typed.retry_backoff,
                    backoff_max=typed.retry_backoff_max,
                    max_retry_after=typed.max_retry_after,
                    jitter=random.random(),  # noqa: S311  (jitter, not a secret)
                )
                failed.extend(_failed_trace_ids(response.history))
                if delay is None or not _rewind_body(request):
                    break
                trace = api_rules.trace_id(response.headers)
                if trace is not None:
                    failed.append(trace)
                api_rules.log_retry(method, request.url, str(response.status_code), attempts, delay)
                response.close()
            time.sleep(delay)
            attempt = self._again(request, retried_401)
        response.getpaid_attempts = attempts  # type: ignore[attr-defined]
        response.getpaid_failed_trace_ids = tuple(failed)  # type: ignore[attr-defined]
        api_rules.log_call(
            method,
            request.url,
            str(response.status_code),
            api_rules.trace_id(response.headers),
            attempts,
            started,
        )
        if self.raise_errors:
            error = api_error(response)
            if error is not None:
                raise error
        return response

    @staticmethod
    def _again(request: requests.PreparedRequest, retried_401: bool) -> requests.PreparedRequest:
        """A copy of ``request`` to send again: the same headers (the idempotency key) and
        body, with the current token; no second 401 retry once one was made."""
        again = request.copy()
        auth = getattr(request, "_getpaid_auth", None)
        if isinstance(auth, GetpaidBearerAuth):
            snapshot, token = service.current_token(auth.tenant, auth.environment)
            _apply(again, snapshot, token)
            again._getpaid_auth = auth  # type: ignore[attr-defined]
        if retried_401:
            again._getpaid_retried = True  # type: ignore[attr-defined]  # one retry a call
        return again

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        """On a redirect: requests' rules (strip Authorization across hosts, .netrc), then
        our token again if the new URL may receive it (see GetpaidBearerAuth.redirected)."""
        prepared_request._getpaid_redirect = True  # type: ignore[attr-defined]  # see send()
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]  # no stub types
        previous = response.request
        auth = getattr(previous, "_getpaid_auth", None)
        if isinstance(auth, GetpaidBearerAuth):
            auth.redirected(prepared_request, previous)

    def close(self) -> None:
        """Keep the process-wide pool open; only this session's state is dropped."""
        self.adapters.clear()


# --- calls: logging, attempts, errors ---------------------------------------------------


def _used_401_retry(request: Any) -> bool:
    return bool(getattr(request, "_getpaid_retried", False))


def _failed_trace_ids(history: list[requests.Response]) -> list[str]:
    """Trace ids of the failed answers inside one attempt (a 401 that was retried)."""
    found = []
    for earlier in history:
        if earlier.status_code >= 400:
            trace = api_rules.trace_id(earlier.headers)
            if trace is not None:
                found.append(trace)
    return found


def _sent_tokens(response: requests.Response) -> list[str]:
    """The bearer tokens this call sent (masked if the server quotes them back)."""
    tokens = []
    for sent in (*response.history, response):
        request = getattr(sent, "request", None)
        authorization = request.headers.get("Authorization") if request is not None else None
        if isinstance(authorization, str):
            tokens.append(authorization.partition(" ")[2].strip() or authorization)
    return tokens


def _error_body(response: requests.Response) -> bytes | None:
    """At most MAX_PROBLEM_BYTES (+1) bytes of an error answer's body, or None.

    A body already read is used as is. A streamed one (``stream=True``) not read yet is
    read here, at most MAX_PROBLEM_BYTES + 1 bytes: when it is that short, it becomes the
    response's ``content`` as usual; a longer one is not a problem document: the bytes
    read become ``content`` and the connection is closed.
    """
    limit = api_rules.MAX_PROBLEM_BYTES
    content: Any = getattr(response, "_content", False)  # requests' private state:
    if content is not False or getattr(response, "_content_consumed", False):  # read already
        return content if isinstance(content, bytes) else None
    raw = response.raw
    if raw is None:
        return None
    try:
        data = raw.read(limit + 1, decode_content=True)
    except Exception:  # a hostile or broken answer: no problem document
        response.close()
        return None
    if not isinstance(data, bytes):
        response.close()
        return None
    response._content = data
    response._content_consumed = True  # type: ignore[attr-defined]
    if len(data) > limit:
        response.close()
    else:
        release = getattr(raw, "release_conn", None)
        if release is not None:
            release()
    return data


def api_error(response: requests.Response) -> GetpaidAPIError | None:
    """The typed error for a getpaid API answer: None for a status below 400.

    For callers who check ``response.ok`` themselves (a session without
    ``raise_errors``)::

        response = get_session(tenant).post("/v2/payments", json=payment)
        error = api_error(response)
        if error is not None:
            logger.warning("%s", error)  # status, method, path, title, detail, trace id

    Returns the same error a ``raise_errors=True`` session raises:
    :class:`~django_getpaid_auth.exceptions.GetpaidAPIError` or the subclass for the
    status, with ``attempts`` and ``failed_trace_ids`` from a ``GetpaidSession``
    response (1 and ``()`` for another). The problem document is parsed from at most
    64 KiB of the body (a streamed body not read yet is read that far); a larger or
    malformed body gives ``problem=None``, never an exception.
    """
    if response.status_code < 400:
        return None
    request = getattr(response, "request", None)
    return api_rules.build_error(
        status=response.status_code,
        headers=response.headers,
        body=_error_body(response),
        method=getattr(request, "method", None),
        url=getattr(request, "url", None) or response.url,
        request_headers=getattr(request, "headers", None),
        attempts=getattr(response, "getpaid_attempts", 1),
        failed_trace_ids=getattr(response, "getpaid_failed_trace_ids", ()),
        response=response,
        secrets=_sent_tokens(response),
        now=clock.now(),
    )


def get_session(
    tenant: TenantRef | None = None,
    environment: str | None = None,
    *,
    raise_errors: bool = False,
) -> GetpaidSession:
    """A session authenticated for ``tenant`` in ``environment`` ("live" or "sandbox").

    ``tenant`` is a tenant instance or its key string; ``None`` means the current tenant
    (``GETPAID_AUTH["TENANT_RESOLVER"]``), resolved now: the session keeps that tenant.
    With ``environment`` omitted the tenant's only active credential is used. Warm calls
    run no SQL.

    With ``raise_errors=True``, a 4xx/5xx answer (after the retries and the 401 retry)
    raises a :class:`~django_getpaid_auth.exceptions.GetpaidAPIError` subclass instead
    of being returned. See :class:`GetpaidSession` for idempotency keys and retries.
    """
    tenant = service.tenant_or_current(tenant)
    snapshot = service.credential_for(tenant, environment)
    return GetpaidSession(snapshot, tenant, environment, raise_errors=raise_errors)
