"""token -> request: ``get_session(tenant)`` and the ``requests.Session`` it returns.

A ``GetpaidSession`` resolves relative URLs against the environment's API URL, refuses
to send its token anywhere else, applies a default timeout and a versioned User-Agent,
and shares one connection pool per process, so creating a session per view is cheap.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.cookies import cookiejar_from_dict
from requests.hooks import default_hooks
from requests.models import DEFAULT_REDIRECT_LIMIT
from requests.utils import default_headers

from . import credentials, service, token_store
from .conf import getpaid_settings
from .credentials import CredentialSnapshot, TenantRef
from .exceptions import ForeignHostError
from .token_client import USER_AGENT
from .tokens import AccessToken

# One pool per process for all sessions (urllib3 pools are thread-safe).
_shared_adapter = HTTPAdapter(pool_connections=32, pool_maxsize=64)
_SHARED_MOUNTS = (("https://", _shared_adapter), ("http://", _shared_adapter))
_SESSION_ATTRIBUTES = {
    "headers", "auth", "proxies", "hooks", "params", "stream", "verify", "cert",
    "max_redirects", "trust_env", "cookies", "adapters",
}  # fmt: skip
# Our fast __init__ is used only while it sets exactly what requests' own would.
_FAST_INIT = set(vars(requests.Session())) == _SESSION_ATTRIBUTES


class GetpaidBearerAuth(requests.auth.AuthBase):
    """Adds the tenant's current token; on a 401 renews it and retries once."""

    def __init__(self, tenant: TenantRef, environment: str | None) -> None:
        self.tenant = tenant
        self.environment = environment

    def __repr__(self) -> str:
        return f"<GetpaidBearerAuth tenant={self.tenant!r} environment={self.environment!r}>"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        snapshot, token = service.current_token(self.tenant, self.environment)
        _apply(request, snapshot, token)
        request.register_hook("response", self._retry_on_401)
        return request

    def _retry_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, "_getpaid_retried", False):
            return response
        snapshot: CredentialSnapshot = request._getpaid_snapshot  # type: ignore[attr-defined]
        rejected: AccessToken = request._getpaid_token  # type: ignore[attr-defined]
        token_store.forget_if_current(snapshot, rejected)
        snapshot, token = service.current_token(self.tenant, self.environment)
        retry = request.copy()
        _apply(retry, snapshot, token)
        retry._getpaid_retried = True  # type: ignore[attr-defined]
        response.content  # noqa: B018  (drain so the connection can be reused)
        response.close()
        new_response = response.connection.send(retry, **kwargs)
        new_response.history.append(response)
        new_response.request = retry
        return new_response


def _apply(
    request: requests.PreparedRequest, snapshot: CredentialSnapshot, token: AccessToken
) -> None:
    _require_allowed_host(request.url or "", snapshot)
    request.headers["Authorization"] = token.authorization
    request._getpaid_snapshot = snapshot  # type: ignore[attr-defined]
    request._getpaid_token = token  # type: ignore[attr-defined]


def _require_allowed_host(url: str, snapshot: CredentialSnapshot) -> None:
    parts = urlsplit(url)
    netloc = parts.netloc.lower()
    hostname = (parts.hostname or "").lower()
    allowed = snapshot.allowed_hosts
    if parts.scheme != "https" and parts.scheme != snapshot.api_scheme:
        raise ForeignHostError(
            f"Refusing to send a getpaid token over {parts.scheme}:// ({netloc}): the API is "
            f"configured as {snapshot.api_scheme}://, so use https or a relative URL."
        )
    if netloc not in allowed and hostname not in allowed:
        raise ForeignHostError(
            f"Refusing to send a getpaid token to {parts.scheme}://{netloc}: only "
            f"{', '.join(sorted(allowed))} may receive it. Use a relative URL, or add the host "
            'to GETPAID_AUTH["ALLOWED_API_HOSTS"].'
        )


class GetpaidSession(requests.Session):
    """A ``requests.Session`` authenticated for one tenant's getpaid environment."""

    def __init__(
        self, snapshot: CredentialSnapshot, tenant: TenantRef, environment: str | None
    ) -> None:
        if _FAST_INIT:
            # requests.Session.__init__ builds two HTTPAdapters (connection pools) that
            # we would throw away for the shared one: a third of get_session's cost.
            self.headers = default_headers()
            self.auth = None
            self.proxies = {}
            self.hooks = default_hooks()
            self.params = {}
            self.stream = False
            self.verify = True
            self.cert = None
            self.max_redirects = DEFAULT_REDIRECT_LIMIT
            self.trust_env = True
            self.cookies = cookiejar_from_dict({})
            self.adapters = OrderedDict(_SHARED_MOUNTS)
        else:  # a requests version with other Session attributes: the plain way
            super().__init__()
            for prefix, adapter in _SHARED_MOUNTS:
                self.mount(prefix, adapter)
        self.tenant = tenant
        self.environment = snapshot.environment
        self.api_url = snapshot.api_url
        self.headers["User-Agent"] = USER_AGENT
        self.auth = GetpaidBearerAuth(tenant, environment)

    def __repr__(self) -> str:
        return f"<GetpaidSession tenant={self.tenant!r} environment={self.environment!r}>"

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:  # type: ignore[override]
        if isinstance(url, bytes):
            url = url.decode()
        if not urlsplit(url).scheme:
            url = f"{self.api_url}/{url.lstrip('/')}"
        kwargs.setdefault("timeout", tuple(getpaid_settings.API_TIMEOUT))
        return super().request(method, url, *args, **kwargs)

    def close(self) -> None:
        """Keep the process-wide pool open; only this session's state is dropped."""
        self.adapters.clear()


def get_session(tenant: TenantRef, environment: str | None = None) -> GetpaidSession:
    """A session authenticated for ``tenant`` in ``environment`` ("live" or "sandbox").

    ``tenant`` is a tenant instance or its key string. With ``environment`` omitted the
    tenant's only active credential is used. Warm calls run no SQL.
    """
    snapshot = credentials.cached_snapshot(tenant, environment) or credentials.resolve(
        tenant, environment
    )
    return GetpaidSession(snapshot, tenant, environment)
