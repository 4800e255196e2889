"""Socket-free token endpoint mocks built on the ``responses`` library.

Why: unit tests of the token cache/client want to count and shape token calls
without starting :class:`~django_getpaid_auth.testing.FakeGetpaid`. The package's
own tests use :class:`TokenEndpoint`, so what users get is the helper the project
trusts. Each successful call gets a fresh, well-formed (HS256, dummy key) JWT whose
expiry follows :func:`django_getpaid_auth.clock.now` (the clock tests move), so "a
new token was fetched" is observable by comparing strings.

``responses`` is optional: it is imported when a mock is registered, not before.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote_plus

from django_getpaid_auth import clock
from django_getpaid_auth.testing.jwt import make_jwt
from django_getpaid_auth.testing.token_server import LIVE_AUDIENCE

if TYPE_CHECKING:
    import responses
    from requests import PreparedRequest

__all__ = ["Answer", "TokenEndpoint", "auth0_error", "make_jwt", "mock_token_endpoint"]

#: What a token request is answered with: ``(status, headers, body)``, as ``responses``
#: callbacks return it.
Answer = tuple[int, dict[str, str], str]

#: Issuer of the tokens the mocks mint (Auth0 style, trailing slash).
ISSUER = "https://auth.getpaid.io/"

_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "Bad Request"),
    401: ("access_denied", "Unauthorized"),
    403: ("access_denied", "Forbidden"),
    429: ("too_many_requests", "Global limit has been reached"),
}
_JSON_NO_STORE = {"Content-Type": "application/json", "Cache-Control": "no-store"}


def auth0_error(status: int, error: str, description: str, **headers: str) -> Answer:
    """An Auth0-shaped error answer (``{"error", "error_description"}``), for ``fail_next``.

    Extra keyword arguments become response headers, e.g.
    ``auth0_error(429, "too_many_requests", "slow down", **{"Retry-After": "3"})``.
    """
    return (
        status,
        {"Content-Type": "application/json", **headers},
        json.dumps({"error": error, "error_description": description}),
    )


def _responses() -> Any:
    """The ``responses`` module, imported only when a mock is registered (it is optional)."""
    try:
        import responses
    except ImportError as exc:
        raise ImportError(
            "the responses helpers of django_getpaid_auth.testing need the optional "
            "'responses' package: pip install 'django-getpaid-auth[testing]'"
        ) from exc
    return responses


def _request_params(request: PreparedRequest) -> dict[str, Any]:
    """The token request's parameters, from a JSON or form-encoded body ({} if neither)."""
    body = request.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return {}
    content_type = (request.headers.get("Content-Type") or "").lower()
    try:
        if "json" in content_type or body.lstrip().startswith("{"):
            loaded = json.loads(body)
            return loaded if isinstance(loaded, dict) else {}
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    except ValueError:
        return {}


def _basic_client_id(request: PreparedRequest) -> str | None:
    """The client id of an HTTP Basic ``Authorization`` header, if there is one."""
    scheme, _, credentials = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic" or not credentials.strip():
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        return None
    raw_id, sep, _ = decoded.partition(":")
    return unquote_plus(raw_id) if sep else None


class TokenEndpoint:
    """A POST on the token URL of ``rsps`` that counts requests and can be scripted.

    ``rsps`` is a ``responses.RequestsMock`` (or the ``responses`` module). Each
    request is recorded in :attr:`requests`; it gets the next scripted answer (see
    :meth:`fail_next`) if any, else ``answer`` when given, else a new token: a JWT
    recorded in :attr:`issued`, with ``exp`` = :func:`django_getpaid_auth.clock.now`
    + ``jwt_exp_offset`` (default ``expires_in``), the request's ``client_id`` and
    ``audience``, and ``scope`` (default: the requested scope).

    ``token_url`` defaults to the package's configured ``TOKEN_URL``, read once here
    (so Django settings must be configured only when it is omitted). ``delay`` sleeps
    that many real seconds before answering, for concurrency tests. :attr:`response`
    is the registered ``responses`` object (its ``call_count`` equals :attr:`count`).
    """

    def __init__(
        self,
        rsps: Any,
        *,
        token_url: str | None = None,
        expires_in: int = 3600,
        scope: str | None = None,
        delay: float = 0.0,
        jwt_exp_offset: int | None = None,
        answer: Answer | Callable[[], Answer] | None = None,
    ) -> None:
        responses_lib = _responses()
        if token_url is None:
            from django_getpaid_auth.conf import getpaid_settings

            token_url = getpaid_settings.TOKEN_URL
        self.token_url: str = token_url
        self.expires_in = expires_in
        self.scope = scope
        self.delay = delay
        self.jwt_exp_offset = jwt_exp_offset
        self.answer = answer
        #: Every token request received, in order (``requests.PreparedRequest``).
        self.requests: list[PreparedRequest] = []
        #: Every access token minted, in order (scripted answers are not included).
        self.issued: list[str] = []
        #: Answers still to be given before the default one (FIFO).
        self.script: list[Answer | Callable[[], Answer]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.response: responses.BaseResponse = rsps.add(
            responses_lib.CallbackResponse(method="POST", url=token_url, callback=self._answer)
        )

    @property
    def count(self) -> int:
        """How many token requests have been received."""
        return len(self.requests)

    def fail_next(self, *answers: Answer | Callable[[], Answer]) -> None:
        """Answer the next requests with these, in order (e.g. :func:`auth0_error` results).

        A callable is called at answer time, so it can build a token with the current
        clock or raise (``responses`` then raises it to the client, e.g. a
        ``requests.ConnectionError``).
        """
        with self._lock:
            self.script.extend(answers)

    def client_ids(self) -> list[str | None]:
        """The ``client_id`` of each request, in order (``None`` when it sent none)."""
        with self._lock:
            requests = list(self.requests)
        return [_request_params(r).get("client_id") or _basic_client_id(r) for r in requests]

    def _answer(self, request: PreparedRequest) -> Answer:
        with self._lock:
            self.requests.append(request)
            scripted = self.script.pop(0) if self.script else self.answer
            n = next(self._ids)
        if self.delay:
            time.sleep(self.delay)
        if scripted is not None:
            if callable(scripted):
                return scripted()
            status, headers, body = scripted
            return status, dict(headers), body
        token, scope = self._mint(request, n)
        payload = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": scope,
        }
        return 200, dict(_JSON_NO_STORE), json.dumps(payload)

    def _mint(self, request: PreparedRequest, n: int) -> tuple[str, str]:
        params = _request_params(request)
        client_id = str(params.get("client_id") or _basic_client_id(request) or "unknown")
        scope = self.scope if self.scope is not None else str(params.get("scope") or "")
        lifetime = self.jwt_exp_offset if self.jwt_exp_offset is not None else self.expires_in
        now = int(clock.now())
        token = make_jwt(
            {
                "iss": ISSUER,
                "sub": f"{client_id}@clients",
                "aud": params.get("audience") or LIVE_AUDIENCE,
                "iat": now,
                "exp": now + lifetime,
                "scope": scope,
                "gty": "client-credentials",
                "azp": client_id,
                "jti": uuid.uuid4().hex,
                "n": n,
            },
            kid="mock",
        )
        with self._lock:
            self.issued.append(token)
        return token, scope


def mock_token_endpoint(
    rsps: Any,
    *,
    token_url: str | None = None,
    access_token: str | None = None,
    expires_in: int = 3600,
    scope: str = "payments:read",
    status: int = 200,
    json_body: Mapping[str, Any] | None = None,
) -> responses.BaseResponse:
    """Register a POST on the token URL of ``rsps`` (a ``RequestsMock`` or the module).

    ``token_url`` defaults to the package's configured ``TOKEN_URL`` (read lazily,
    so Django settings must be configured only when it is omitted). ``json_body``
    replaces the whole answer; otherwise a non-200 ``status`` gets an Auth0-shaped
    error and a 200 an access token response (``access_token`` fixes the token). The
    returned object's ``call_count`` tells how many token requests were made. For
    scripted failures and the issued tokens, use :class:`TokenEndpoint`.
    """
    answer: Answer | None = None
    if json_body is not None:
        answer = (status, dict(_JSON_NO_STORE), json.dumps(dict(json_body)))
    elif status != 200:
        error, description = _DEFAULT_ERRORS.get(
            status, ("server_error", "An unexpected error occurred")
        )
        answer = auth0_error(status, error, description, **{"Cache-Control": "no-store"})
    elif access_token is not None:
        body = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scope,
        }
        answer = (200, dict(_JSON_NO_STORE), json.dumps(body))
    endpoint = TokenEndpoint(
        rsps, token_url=token_url, expires_in=expires_in, scope=scope, answer=answer
    )
    return endpoint.response
