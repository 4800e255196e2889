"""Test doubles for getpaid: a local fake server and ``responses`` helpers.

Importable without Django settings and without the optional ``responses``
package: the ``responses``-based helpers (:class:`TokenEndpoint`,
:func:`auth0_error`, :func:`mock_token_endpoint`) are loaded on first attribute
access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_getpaid_auth.testing.fake_getpaid import (
    API_FAULT_KINDS,
    FAULT_KINDS,
    KNOWN_SCOPES,
    LIVE_AUDIENCE,
    QUOTA_BUCKETS,
    SANDBOX_AUDIENCE,
    FakeClient,
    FakeGetpaid,
)
from django_getpaid_auth.testing.jwt import decode_jwt, make_jwt

if TYPE_CHECKING:
    from django_getpaid_auth.testing.responses_helper import (
        TokenEndpoint,
        auth0_error,
        mock_token_endpoint,
    )

__all__ = [
    "API_FAULT_KINDS",
    "FAULT_KINDS",
    "KNOWN_SCOPES",
    "LIVE_AUDIENCE",
    "QUOTA_BUCKETS",
    "SANDBOX_AUDIENCE",
    "FakeClient",
    "FakeGetpaid",
    "TokenEndpoint",
    "auth0_error",
    "decode_jwt",
    "make_jwt",
    "mock_token_endpoint",
]

_LAZY = {"TokenEndpoint", "auth0_error", "mock_token_endpoint"}


def __getattr__(name: str) -> Any:
    """Import the ``responses`` helper only when asked for (``responses`` is optional)."""
    if name in _LAZY:
        from django_getpaid_auth.testing import responses_helper

        return getattr(responses_helper, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
