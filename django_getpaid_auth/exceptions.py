"""Every error django-getpaid-auth raises, under one base class: ``GetpaidAuthError``.

Messages name what happened and what to fix. They never contain a client secret, an
access token or ciphertext.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import requests
from django.core.exceptions import ImproperlyConfigured

# Control (C0, DEL, C1), format (bidi overrides and isolates, zero-width), surrogate and
# line/paragraph separator characters: they can rewrite a terminal or reorder a log line.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(char: str) -> str:
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: object) -> str:
    """``text`` on one line, safe for a terminal or a log.

    Whitespace runs (tabs, newlines...) become one space; control, format (e.g. U+202E
    RIGHT-TO-LEFT OVERRIDE), surrogate and separator characters are shown escaped
    (``\\x1b``, ``\\u202e``). Idempotent.
    """
    text = " ".join(str(text).split())
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


class GetpaidAuthError(Exception):
    """Base class: ``except GetpaidAuthError`` catches everything this package raises."""


# --- configuration -----------------------------------------------------------------


class GetpaidAuthConfigurationError(GetpaidAuthError, ImproperlyConfigured):
    """The project's settings are wrong; the message names the setting to fix."""


class MissingEncryptionKeyError(GetpaidAuthConfigurationError):
    """No encryption key is configured."""


class InvalidEncryptionKeyError(GetpaidAuthConfigurationError):
    """A configured encryption key is not a valid Fernet key."""


class UnknownEnvironmentError(GetpaidAuthConfigurationError):
    """An environment name that GETPAID_AUTH["ENVIRONMENTS"] does not define."""


# --- stored data -------------------------------------------------------------------


class CredentialDecryptionError(GetpaidAuthError):
    """A stored secret cannot be decrypted with any configured key."""

    def __init__(self, message: str, *, credential_id: Any = None) -> None:
        super().__init__(message)
        self.credential_id = credential_id


class EncryptedFieldLookupError(GetpaidAuthError, TypeError):
    """Filtering on an encrypted field was attempted; ciphertext cannot be compared."""


class TenantNotFoundError(GetpaidAuthError, LookupError):
    """No tenant matches the key given to get_session/get_token."""


class NoCurrentTenantError(GetpaidAuthError, LookupError):
    """No tenant was given, and no resolver (or no current tenant) supplies one."""


class CredentialNotFoundError(GetpaidAuthError, LookupError):
    """The tenant has no active credential for the requested environment."""


class AmbiguousEnvironmentError(GetpaidAuthError):
    """No environment was given and the tenant has several active credentials."""


# --- token endpoint ----------------------------------------------------------------


class TokenRequestError(GetpaidAuthError):
    """The token endpoint did not give us a usable token.

    Carries what a human needs to act: tenant, environment, HTTP status, the server's
    ``error`` / ``error_description``, the ``Getpaid-Trace-Id`` and a hint.
    """

    hint = ""
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        tenant: str = "",
        environment: str = "",
        status: int | None = None,
        error: str = "",
        error_description: str = "",
        trace_id: str = "",
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        self.tenant = tenant
        self.environment = environment
        self.status = status
        # What the token server said is untrusted text: it is shown to operators
        # (logs, getpaid_check, the admin), so never with control characters.
        self.error = printable(error) if error else ""
        self.error_description = printable(error_description) if error_description else ""
        self.trace_id = printable(trace_id) if trace_id else ""
        self.retry_after = retry_after
        if hint is not None:
            self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        parts = [self.args[0] if self.args else self.__class__.__name__]
        context = []
        if self.tenant:
            context.append(f"tenant={self.tenant}")
        if self.environment:
            context.append(f"environment={self.environment}")
        if self.status is not None:
            context.append(f"status={self.status}")
        if self.error:
            context.append(f"error={self.error}")
        if self.error_description:
            context.append(f"description={self.error_description!r}")
        if self.trace_id:
            context.append(f"trace_id={self.trace_id}")
        if self.retry_after is not None:
            context.append(f"retry_after={self.retry_after:g}s")
        if context:
            parts.append(f"({', '.join(context)})")
        if self.hint:
            parts.append(f"Hint: {self.hint}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, safe to store in the cache as failure memory."""
        return {
            "class": type(self).__name__,
            "message": self.args[0] if self.args else "",
            "tenant": self.tenant,
            "environment": self.environment,
            "status": self.status,
            "error": self.error,
            "error_description": self.error_description,
            "trace_id": self.trace_id,
            "retry_after": self.retry_after,
            "hint": self.hint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenRequestError:
        error_class = _TOKEN_ERRORS.get(data.get("class", ""), TokenRequestError)
        fields = {k: v for k, v in data.items() if k not in ("class", "message")}
        return error_class(data.get("message", ""), **fields)


class InvalidClientError(TokenRequestError):
    """Wrong client_id or client_secret (Auth0: 401 access_denied "Unauthorized")."""

    hint = "Check the client ID and secret stored for this tenant and environment."


class AudienceNotEnabledError(TokenRequestError):
    """The client may not request tokens for this environment's audience."""

    hint = (
        "Enable the API (audience) for this client in getpaid, or check that the "
        "credential belongs to this environment (live vs sandbox)."
    )


class ClientGrantMissingError(TokenRequestError):
    """The client has no client grant for the audience."""

    hint = "Ask getpaid to authorize this client for the API (a client grant is missing)."


class InvalidScopeError(TokenRequestError):
    """A requested scope is unknown or has not been granted to the client."""

    hint = "Remove the scope from the credential, or ask getpaid to grant it to this client."


class UnauthorizedClientError(TokenRequestError):
    """The client may not use the client_credentials grant."""

    hint = "Enable the client_credentials grant type for this client in getpaid."


class RateLimitedError(TokenRequestError):
    """Auth0 rate limit or token quota reached (HTTP 429)."""

    hint = (
        "Too many token requests. Tokens are cached; make sure every worker shares one "
        "cache (Redis/Memcached) so they share one token."
    )
    retryable = True

    def __init__(self, message: str, *, quota: str = "", **kwargs: Any) -> None:
        self.quota = printable(quota) if quota else ""
        super().__init__(message, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "quota": self.quota}


class TokenEndpointUnavailableError(TokenRequestError, requests.RequestException):
    """5xx, timeout or connection failure talking to the token endpoint."""

    hint = "The token endpoint is unreachable or failing; retry later."
    retryable = True


class MalformedTokenResponseError(TokenRequestError):
    """The token endpoint answered 2xx but not with a usable token."""

    hint = "Check GETPAID_AUTH['TOKEN_URL']: it must point at getpaid's OAuth token endpoint."


class TokenWaitTimeoutError(TokenRequestError):
    """Another process was fetching the token and did not finish within WAIT_TIMEOUT."""

    hint = "Another worker holds the token lease; check the token endpoint latency."
    retryable = True


_TOKEN_ERRORS: dict[str, type[TokenRequestError]] = {
    cls.__name__: cls
    for cls in (
        TokenRequestError,
        InvalidClientError,
        AudienceNotEnabledError,
        ClientGrantMissingError,
        InvalidScopeError,
        UnauthorizedClientError,
        RateLimitedError,
        TokenEndpointUnavailableError,
        MalformedTokenResponseError,
        TokenWaitTimeoutError,
    )
}


# --- API session -------------------------------------------------------------------


class ForeignHostError(GetpaidAuthError, ValueError):
    """A GetpaidSession was asked to send its token to a host that is not getpaid's."""


# --- getpaid API answers -------------------------------------------------------------


class GetpaidAPIError(GetpaidAuthError, requests.HTTPError):
    """The getpaid API answered 4xx or 5xx (after the retries and the 401 retry).

    Raised by sessions from ``get_session(..., raise_errors=True)``; returned, not
    raised, by :func:`django_getpaid_auth.api_error`. Also a ``requests.HTTPError``, so
    ``except requests.HTTPError`` (as for ``raise_for_status()``) catches it. Subclasses
    by status: ``APIBadRequestError`` (400, 422), ``APIAuthorizationError`` (401, 403),
    ``APINotFoundError`` (404), ``APIConflictError`` (409), ``APIRateLimitedError``
    (429), ``APIServerError`` (5xx); another 4xx is a plain ``GetpaidAPIError``.

    Attributes:

    - ``status_code``: the HTTP status;
    - ``problem``: the RFC 7807 problem document (a dict), or None when the body is not
      ``application/problem+json`` (or is larger than 64 KiB or not a JSON object);
      untrusted server data, as is;
    - ``trace_id``: the answer's ``Getpaid-Trace-Id`` (printable), or None; quote it to
      getpaid's support;
    - ``idempotency_key``: the request's ``Getpaid-Idempotency-Key``, or None;
    - ``method`` and ``path`` (without the query string) of the request;
    - ``attempts``: how many times the request was sent (1 + retries; the 401 retry is
      not counted);
    - ``failed_trace_ids``: the trace ids of earlier failed answers of this call (retried
      attempts, a 401 that was retried), oldest first;
    - ``response`` (and ``request``): the ``requests`` objects, as on any HTTPError.

    The message reads ``getpaid API 409 Conflict on POST /v2/payments: <title> —
    <detail> (trace id …)``. It quotes only the problem's title and detail (printable,
    bounded, with the bearer token masked); never a request header or body.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status_code: int = 0,
        problem: dict[str, Any] | None = None,
        trace_id: str | None = None,
        idempotency_key: str | None = None,
        method: str = "",
        path: str = "",
        attempts: int = 1,
        failed_trace_ids: tuple[str, ...] = (),
        response: requests.Response | None = None,
    ) -> None:
        requests.HTTPError.__init__(self, message, response=response)
        self.status_code = status_code
        self.problem = problem
        self.trace_id = trace_id
        self.idempotency_key = idempotency_key
        self.method = method
        self.path = path
        self.attempts = attempts
        self.failed_trace_ids = failed_trace_ids


class APIBadRequestError(GetpaidAPIError):
    """400 or 422: the request is malformed or invalid; sending it again will not help."""


class APIAuthorizationError(GetpaidAPIError):
    """401 or 403: the token was refused (after the automatic 401 retry) or lacks a scope."""


class APINotFoundError(GetpaidAPIError):
    """404: the checkout, payment, application or account does not exist."""


class APIConflictError(GetpaidAPIError):
    """409: the request conflicts with the resource's state, or an idempotency key was
    reused with a different body."""


class APIRateLimitedError(GetpaidAPIError):
    """429: too many requests. ``retry_after``: seconds to wait (``Retry-After``), or None."""

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class APIServerError(GetpaidAPIError):
    """5xx: getpaid failed. Retry later with the same ``Getpaid-Idempotency-Key``."""
