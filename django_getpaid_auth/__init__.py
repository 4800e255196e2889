"""django-getpaid-auth: per-tenant OAuth2 client-credentials tokens for the getpaid API.

Public API::

    from django_getpaid_auth import api_error, get_session, get_token, invalidate_token

Names are imported lazily so that importing the package never needs Django set up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .user_agent import __version__ as __version__

__all__ = [
    "AccessToken",
    "GetpaidBearerAuth",
    "GetpaidSession",
    "api_error",
    "get_session",
    "get_token",
    "invalidate_token",
]

_LAZY = {
    "AccessToken": "django_getpaid_auth.tokens",
    "GetpaidBearerAuth": "django_getpaid_auth.session",
    "GetpaidSession": "django_getpaid_auth.session",
    "api_error": "django_getpaid_auth.session",
    "get_session": "django_getpaid_auth.session",
    "get_token": "django_getpaid_auth.service",
    "invalidate_token": "django_getpaid_auth.service",
}

if TYPE_CHECKING:
    from .service import get_token, invalidate_token
    from .session import GetpaidBearerAuth, GetpaidSession, api_error, get_session
    from .tokens import AccessToken


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'django_getpaid_auth' has no attribute {name!r}")
