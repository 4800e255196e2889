"""Socket-free token endpoint mock built on the ``responses`` library.

Why: unit tests of the token cache/client want to count and shape token calls
without starting :class:`~django_getpaid_auth.testing.FakeGetpaid`. Each call
gets a fresh, well-formed (HS256, dummy key) JWT so "a new token was fetched" is
observable by comparing strings.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from django_getpaid_auth.testing.jwt import make_jwt
from django_getpaid_auth.testing.token_server import LIVE_AUDIENCE

if TYPE_CHECKING:
    import responses
    from requests import PreparedRequest

__all__ = ["make_jwt", "mock_token_endpoint"]

_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "Bad Request"),
    401: ("access_denied", "Unauthorized"),
    403: ("access_denied", "Forbidden"),
    429: ("too_many_requests", "Global limit has been reached"),
}


def _request_params(request: PreparedRequest) -> dict[str, Any]:
    body = request.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return {}
    content_type = (request.headers.get("Content-Type") or "").lower()
    try:
        if "json" in content_type:
            loaded = json.loads(body)
            return loaded if isinstance(loaded, dict) else {}
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    except ValueError:
        return {}


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
    error and a 200 an access token response. The returned object's ``call_count``
    tells how many token requests were made.
    """
    import responses as responses_lib

    if token_url is None:
        from django_getpaid_auth.conf import getpaid_settings

        token_url = getpaid_settings.TOKEN_URL

    def callback(request: PreparedRequest) -> tuple[int, dict[str, str], str]:
        headers = {"Cache-Control": "no-store"}
        if json_body is not None:
            return status, headers, json.dumps(dict(json_body))
        if status != 200:
            error, description = _DEFAULT_ERRORS.get(
                status, ("server_error", "An unexpected error occurred")
            )
            body = {"error": error, "error_description": description}
            return status, headers, json.dumps(body)
        token = access_token
        if token is None:
            params = _request_params(request)
            client_id = str(params.get("client_id") or "mock-client")
            now = int(time.time())
            token = make_jwt(
                {
                    "iss": "https://auth.getpaid.io/",
                    "sub": f"{client_id}@clients",
                    "aud": params.get("audience") or LIVE_AUDIENCE,
                    "iat": now,
                    "exp": now + expires_in,
                    "scope": scope,
                    "gty": "client-credentials",
                    "azp": client_id,
                    "jti": uuid.uuid4().hex,
                },
                kid="mock",
            )
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scope,
        }
        return status, headers, json.dumps(body)

    response = responses_lib.CallbackResponse(
        method="POST",
        url=token_url,
        callback=callback,
        content_type="application/json",
    )
    return rsps.add(response)
