"""Settings for django-getpaid-auth, read from the ``GETPAID_AUTH`` dict.

Every value is looked up on access (never cached across ``setting_changed``), so
``override_settings`` and key rotation take effect immediately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

SETTING_NAME = "GETPAID_AUTH"
TENANT_MODEL_SETTING = "GETPAID_AUTH_TENANT_MODEL"
DEFAULT_TENANT_MODEL = "django_getpaid_auth.Tenant"

LIVE = "live"
SANDBOX = "sandbox"

DEFAULTS: dict[str, Any] = {
    # Fernet keys; the first encrypts, all decrypt.
    "ENCRYPTION_KEYS": [],
    # Which entry of settings.CACHES holds tokens, leases and failure memory.
    "CACHE_ALIAS": "default",
    "CACHE_KEY_PREFIX": "getpaid_auth",
    "TOKEN_URL": "https://auth.getpaid.io/oauth/token",
    "ENVIRONMENTS": {
        LIVE: {"AUDIENCE": "https://api.getpaid.io", "API_URL": "https://api.getpaid.io"},
        SANDBOX: {
            "AUDIENCE": "https://api.sandbox.getpaid.io",
            "API_URL": "https://api.sandbox.getpaid.io",
        },
    },
    # Extra hosts (host or host:port) a GetpaidSession may send a token to.
    "ALLOWED_API_HOSTS": [],
    # "json" (getpaid/Auth0) or "form" (any RFC 6749 server).
    "TOKEN_REQUEST_FORMAT": "json",
    # "client_secret_post" (credentials in the body) or "client_secret_basic".
    "CLIENT_AUTH_METHOD": "client_secret_post",
    # (connect, read) seconds.
    "TOKEN_REQUEST_TIMEOUT": (5.0, 15.0),
    "API_TIMEOUT": (5.0, 30.0),
    # Retries of 5xx / timeouts / connection errors on the token endpoint.
    "TOKEN_REQUEST_RETRIES": 2,
    "RETRY_BACKOFF": 0.5,
    "RETRY_BACKOFF_MAX": 8.0,
    # A 429 whose Retry-After is at most this many seconds is waited out once.
    "MAX_RETRY_AFTER": 5.0,
    # A token is refreshed max(REFRESH_MARGIN, REFRESH_MARGIN_RATIO * lifetime) before expiry.
    "REFRESH_MARGIN": 60,
    "REFRESH_MARGIN_RATIO": 0.1,
    # Assumed clock difference between us and the token server.
    "CLOCK_SKEW": 10,
    # Seconds a process trusts its in-memory copy of a token before re-reading the shared
    # cache: bounds how long another process's change takes to be seen here. 0 disables.
    "LOCAL_CACHE_TIMEOUT": 1.0,
    # Cross-process single flight: lease lifetime and how long waiters wait.
    "LEASE_TIMEOUT": 20.0,
    "WAIT_TIMEOUT": 30.0,
    # After a credentials/configuration error, fail fast for this many seconds.
    "CONFIG_ERROR_BACKOFF": 60,
    # Field of the tenant model that get_session("key") looks up.
    "TENANT_KEY_FIELD": "slug",
    # A process re-reads a credential (and what a tenant key points at) from the database
    # at least this often, even when no change was announced through the cache: the bound
    # on staleness after QuerySet.update(), raw SQL or an announcement lost with a process.
    "CREDENTIAL_RECHECK_INTERVAL": 60.0,
    # One token request, start to end (connect, headers and body), may take this long.
    "TOKEN_REQUEST_DEADLINE": 30.0,
    # A token endpoint answer larger than this is refused as malformed.
    "MAX_TOKEN_RESPONSE_BYTES": 65536,
    # Background refreshes (tokens in their refresh window) running at once per process.
    "MAX_BACKGROUND_REFRESHES": 4,
    # After the API rejects a freshly fetched token with 401, no new token is fetched on a
    # 401 for this many seconds (the 401 is returned): protects Auth0's rate limit and quota.
    "UNAUTHORIZED_REFETCH_PAUSE": 30.0,
}


class GetpaidAuthSettings:
    """Typed, always-fresh view of ``settings.GETPAID_AUTH`` merged over ``DEFAULTS``."""

    def _user(self) -> dict[str, Any]:
        value = getattr(settings, SETTING_NAME, None)
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown {SETTING_NAME} setting: {name!r}")
        return self._user().get(name, DEFAULTS[name])

    @property
    def environments(self) -> dict[str, dict[str, str]]:
        """Environments with defaults filled per environment, so overriding API_URL alone works."""
        merged: dict[str, dict[str, str]] = {}
        configured = self._user().get("ENVIRONMENTS", DEFAULTS["ENVIRONMENTS"])
        for name, values in configured.items():
            base = DEFAULTS["ENVIRONMENTS"].get(name, {})
            merged[name] = {**base, **(values or {})}
        return merged

    @property
    def tenant_model(self) -> str:
        return getattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL)

    def refresh_margin(self, lifetime: float) -> float:
        """Seconds before expiry at which a token is due for refresh.

        The larger of REFRESH_MARGIN and REFRESH_MARGIN_RATIO x lifetime, but at most half
        the lifetime, so a short-lived token is still reused before it is refreshed.
        """
        margin = max(float(self.REFRESH_MARGIN), float(self.REFRESH_MARGIN_RATIO) * lifetime)
        return min(margin, lifetime / 2)

    def clock_skew(self, lifetime: float) -> float:
        """CLOCK_SKEW, at most a quarter of the lifetime (a token must stay usable a while)."""
        return min(float(self.CLOCK_SKEW), lifetime / 4)


getpaid_settings = GetpaidAuthSettings()


def get_tenant_model_label() -> str:
    """The tenant model as "app_label.ModelName" (migrations call this: no model imports)."""
    return getpaid_settings.tenant_model


_reset_callbacks: list[Callable[[], None]] = []


def on_settings_reset(callback: Callable[[], None]) -> Callable[[], None]:
    """Register a callable run whenever GETPAID_AUTH (or a setting it depends on) changes."""
    _reset_callbacks.append(callback)
    return callback


@receiver(setting_changed)
def _reset_derived_state(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTING_NAME, TENANT_MODEL_SETTING, "CACHES"):
        for callback in _reset_callbacks:
            callback()
