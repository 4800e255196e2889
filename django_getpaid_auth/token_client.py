"""The HTTP call to the OAuth token endpoint, and the mapping of its answers to errors.

Only this module talks to ``GETPAID_AUTH["TOKEN_URL"]``. It retries what is worth
retrying (5xx, timeouts, connection errors: jittered exponential backoff; a 429 with a
short Retry-After: once) and turns every other answer into a typed ``TokenRequestError``
whose message never contains the secret or a token.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from typing import Any
from urllib.parse import quote_plus

import requests
import requests.adapters

from . import __version__, clock
from .conf import getpaid_settings
from .credentials import CredentialSnapshot
from .exceptions import (
    AudienceNotEnabledError,
    ClientGrantMissingError,
    InvalidClientError,
    InvalidScopeError,
    MalformedTokenResponseError,
    RateLimitedError,
    TokenEndpointUnavailableError,
    TokenRequestError,
    UnauthorizedClientError,
)
from .scopes import split_scopes
from .tokens import AccessToken, from_timestamp, jwt_expiry

logger = logging.getLogger("django_getpaid_auth.token_client")

USER_AGENT = f"django-getpaid-auth/{__version__} python-requests/{requests.__version__}"
TRACE_HEADER = "Getpaid-Trace-Id"
MAX_DESCRIPTION = 300
MIN_SCRUB_LENGTH = 8

_http = requests.Session()
_http.headers["User-Agent"] = USER_AGENT
# getpaid_check runs many token requests at once: keep a connection per worker.
_http.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=64))
_http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))


def request_token(snapshot: CredentialSnapshot) -> AccessToken:
    """Fetch a new token for ``snapshot`` (no caching here), retrying transient failures."""
    attempts = 1 + max(0, int(getpaid_settings.TOKEN_REQUEST_RETRIES))
    waited_for_rate_limit = False
    for attempt in range(attempts):
        try:
            return _request_once(snapshot)
        except TokenEndpointUnavailableError as exc:
            if attempt + 1 >= attempts:
                raise
            delay = _backoff(attempt)
            logger.warning(
                "%s; retrying in %.2fs (attempt %d/%d)", exc, delay, attempt + 2, attempts
            )
            time.sleep(delay)
        except RateLimitedError as exc:
            limit = float(getpaid_settings.MAX_RETRY_AFTER)
            if waited_for_rate_limit or exc.retry_after is None or exc.retry_after > limit:
                raise
            if attempt + 1 >= attempts:
                raise
            waited_for_rate_limit = True
            logger.warning("%s; waiting %.2fs once before retrying", exc, exc.retry_after)
            time.sleep(exc.retry_after)
    raise AssertionError("unreachable")  # pragma: no cover


def _backoff(attempt: int) -> float:
    base = float(getpaid_settings.RETRY_BACKOFF)
    ceiling = float(getpaid_settings.RETRY_BACKOFF_MAX)
    return min(ceiling, base * (2**attempt)) * random.uniform(0.5, 1.0)  # noqa: S311


def _request_once(snapshot: CredentialSnapshot) -> AccessToken:
    context = {"tenant": snapshot.tenant_label, "environment": snapshot.environment}
    secret = snapshot.client_secret()
    body: dict[str, str] = {
        "grant_type": "client_credentials",
        "audience": snapshot.audience,
    }
    if snapshot.scopes:
        body["scope"] = " ".join(snapshot.scopes)
    auth = None
    if getpaid_settings.CLIENT_AUTH_METHOD == "client_secret_basic":
        # RFC 6749 2.3.1: both are form-urlencoded before Basic encoding.
        auth = (quote_plus(snapshot.client_id), quote_plus(secret))
    else:
        body["client_id"] = snapshot.client_id
        body["client_secret"] = secret
    kwargs: dict[str, Any] = {"json": body}
    if getpaid_settings.TOKEN_REQUEST_FORMAT == "form":
        kwargs = {"data": body}
    started = clock.now()
    try:
        response = _http.post(
            getpaid_settings.TOKEN_URL,
            auth=auth,
            timeout=tuple(getpaid_settings.TOKEN_REQUEST_TIMEOUT),
            headers={"Accept": "application/json"},
            allow_redirects=False,
            **kwargs,
        )
    except requests.Timeout as exc:
        raise TokenEndpointUnavailableError(
            "Token endpoint timed out.", **context, hint=None
        ) from exc
    except requests.RequestException as exc:
        raise TokenEndpointUnavailableError(
            f"Cannot reach the token endpoint ({type(exc).__name__}).", **context
        ) from exc
    logger.debug(
        "token endpoint answered %s in %.0f ms for tenant=%s environment=%s",
        response.status_code,
        (clock.now() - started) * 1000,
        snapshot.tenant_label,
        snapshot.environment,
    )
    if response.status_code == 200:
        return _parse_success(response, snapshot, context, started)
    raise _error_for(response, snapshot, context)


def _parse_success(
    response: requests.Response,
    snapshot: CredentialSnapshot,
    context: dict[str, str],
    started: float,
) -> AccessToken:
    def malformed(reason: str) -> MalformedTokenResponseError:
        return MalformedTokenResponseError(
            f"Token endpoint answered 200 but {reason}.",
            status=200,
            trace_id=response.headers.get(TRACE_HEADER, ""),
            **context,
        )

    try:
        data = response.json()
    except ValueError:
        raise malformed(f"not with JSON ({_content_type(response)})") from None
    if not isinstance(data, dict):
        raise malformed("the JSON is not an object")
    value = data.get("access_token")
    if not isinstance(value, str) or not value.strip():
        raise malformed("without a non-empty access_token")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise malformed(f"with token_type {str(token_type)[:20]!r} instead of Bearer")
    expires_in = data.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
        raise malformed(
            f"with expires_in {str(expires_in)[:20]!r} (a positive integer is required)"
        )
    expires_at = started + expires_in
    exp_claim = jwt_expiry(value)
    if exp_claim is not None:
        expires_at = min(expires_at, exp_claim)
    if expires_at <= clock.now():
        raise malformed("with a token that has already expired")
    granted = split_scopes(data["scope"]) if isinstance(data.get("scope"), str) else []
    if not granted:
        granted = list(snapshot.scopes)  # RFC 6749 5.1: omitted scope means as requested
    missing = [s for s in snapshot.scopes if s not in granted]
    if missing:
        logger.warning(
            "getpaid granted tenant=%s environment=%s fewer scopes than requested; missing: %s",
            snapshot.tenant_label,
            snapshot.environment,
            " ".join(missing),
        )
    return AccessToken(
        value=value,
        token_type="Bearer",
        expires_at=from_timestamp(expires_at),
        scopes=frozenset(granted),
        obtained_at=from_timestamp(started),
    )


def _content_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "no content type").split(";")[0]


def _scrub(text: str, snapshot: CredentialSnapshot) -> str:
    text = " ".join(str(text).split())[:MAX_DESCRIPTION]
    try:
        secret = snapshot.client_secret()
    except Exception:
        return text
    # Real client secrets are long (Auth0: 64 characters); masking a very short one would
    # only garble the message, so those are left alone.
    return text.replace(secret, "***") if len(secret) >= MIN_SCRUB_LENGTH else text


def _error_for(
    response: requests.Response, snapshot: CredentialSnapshot, context: dict[str, str]
) -> TokenRequestError:
    status = response.status_code
    error = description = raw_error = raw_description = ""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        raw_error = str(data.get("error", ""))
        raw_description = str(data.get("error_description", data.get("message", "")))
        error = _scrub(raw_error, snapshot)[:60]
        description = _scrub(raw_description, snapshot)
    fields: dict[str, Any] = {
        **context,
        "status": status,
        "error": error,
        "error_description": description,
        "trace_id": response.headers.get(TRACE_HEADER, ""),
    }
    # Classify on what the server said; report the scrubbed version.
    lowered = raw_description.lower()
    if status == 429:
        retry_after, quota = rate_limit_wait(response.headers)
        return RateLimitedError(
            "getpaid's token endpoint is rate limiting this client.",
            retry_after=retry_after,
            quota=quota,
            **fields,
        )
    if status >= 500:
        what = "an HTML error page" if "html" in _content_type(response) else "an error"
        return TokenEndpointUnavailableError(
            f"Token endpoint answered {status} with {what}.", **fields
        )
    if raw_error == "unauthorized_client" or "grant type" in lowered:
        return UnauthorizedClientError(
            "This client may not use the client_credentials grant.", **fields
        )
    if raw_error == "invalid_scope" or "granted scope" in lowered:
        return InvalidScopeError("A requested scope was refused.", **fields)
    if "service not enabled" in lowered:
        return AudienceNotEnabledError(
            f"The client is not enabled for audience {snapshot.audience}.", **fields
        )
    if (
        "client-grant" in lowered
        or "client grant" in lowered
        or "not authorized to access" in lowered
    ):
        return ClientGrantMissingError("The client has no grant for this API.", **fields)
    if status in (401, 403) or raw_error in ("invalid_client", "access_denied"):
        return InvalidClientError("getpaid rejected the client credentials.", **fields)
    if data is None:
        return TokenRequestError(
            f"Token endpoint answered {status} with {_content_type(response)}, not JSON.", **fields
        )
    return TokenRequestError(f"Token endpoint refused the request ({status}).", **fields)


_QUOTA_RESET = re.compile(r"(?:^|;)\s*t=(\d+)")


def rate_limit_wait(headers: Any) -> tuple[float | None, str]:
    """Seconds to wait after a 429, from Retry-After, x-ratelimit-reset or Auth0's quota header."""
    quota = headers.get("Auth0-Client-Quota-Limit", "") or headers.get("Auth0-Quota-Limit", "")
    waits: list[float] = []
    retry_after = headers.get("Retry-After")
    if retry_after:
        retry_after = retry_after.strip()
        if retry_after.isdigit():
            waits.append(float(retry_after))
        else:
            parsed = email.utils.parsedate_to_datetime(retry_after) if retry_after else None
            if parsed is not None:
                waits.append(max(0.0, parsed.timestamp() - time.time()))
    reset = headers.get("x-ratelimit-reset")
    if reset and reset.strip().isdigit():
        value = float(reset)
        # epoch seconds (Auth0) or, from some servers, seconds from now
        waits.append(max(0.0, value - time.time()) if value > 10**9 else value)
    match = _QUOTA_RESET.search(quota.replace(",", ";")) if quota else None
    if match and not waits:
        waits.append(float(match.group(1)))
    return (max(waits) if waits else None), quota
