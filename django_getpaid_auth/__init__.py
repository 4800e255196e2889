"""django-getpaid-auth: per-tenant OAuth2 client-credentials tokens for the getpaid API.

Public API::

    from django_getpaid_auth import api_error, get_session, get_token, invalidate_token
    from django_getpaid_auth import aget_session, aget_token, ainvalidate_token, GetpaidAuth

Names are imported lazily so that importing the package never needs Django set up, nor
httpx (an optional extra): without it the async names exist but raise
``GetpaidAuthConfigurationError`` naming the extra when called.

"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .user_agent import __version__ as __version__

__all__ = [
    "AccessToken",
    "GetpaidAsyncClient",
    "GetpaidAuth",
    "GetpaidBearerAuth",
    "GetpaidSession",
    "aget_session",
    "aget_token",
    "ainvalidate_token",
    "api_error",
    "get_session",
    "get_token",
    "invalidate_token",
]

_LAZY = {
    "AccessToken": "django_getpaid_auth.tokens",
    "GetpaidAsyncClient": "django_getpaid_auth.asession",
    "GetpaidAuth": "django_getpaid_auth.asession",
    "aget_session": "django_getpaid_auth.asession",
    "aget_token": "django_getpaid_auth.aservice",
    "ainvalidate_token": "django_getpaid_auth.aservice",
    "GetpaidBearerAuth": "django_getpaid_auth.session",
    "GetpaidSession": "django_getpaid_auth.session",
    "api_error": "django_getpaid_auth.session",
    "get_session": "django_getpaid_auth.session",
    "get_token": "django_getpaid_auth.service",
    "invalidate_token": "django_getpaid_auth.service",
}

if TYPE_CHECKING:
    from .aservice import aget_token, ainvalidate_token
    from .asession import GetpaidAsyncClient, GetpaidAuth, aget_session
    from .service import get_token, invalidate_token
    from .session import GetpaidBearerAuth, GetpaidSession, api_error, get_session
    from .tokens import AccessToken


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as exc:
            if exc.name != "httpx":
                raise
            return _needs_httpx(name)
        return getattr(module, name)
    raise AttributeError(f"module 'django_getpaid_auth' has no attribute {name!r}")


def _needs_httpx(name: str) -> Any:
    """Stands in for an httpx-based name when httpx is not installed: calling it (or
    instantiating it) raises the configuration error that names the extra."""

    def missing(*args: Any, **kwargs: Any) -> Any:
        from .aservice import require_httpx

        require_httpx()  # raises: httpx cannot be imported
        raise AssertionError("unreachable")  # pragma: no cover

    missing.__name__ = missing.__qualname__ = name
    return missing
