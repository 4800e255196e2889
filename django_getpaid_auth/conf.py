"""Settings for django-getpaid-auth, read from the ``GETPAID_AUTH`` dict.

Every value is looked up on access (never cached across ``setting_changed``), so
``override_settings`` and key rotation take effect immediately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    # Retries of a getpaid API call (connection failures, 502/503/504, a short 429; a 500
    # with an idempotency key): GET/HEAD/OPTIONS and requests with a key only. 0 disables.
    "API_RETRIES": 2,
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
    # Dotted path to a callable returning the current tenant, used when get_session() /
    # get_token() get none (django-tenants: "django_getpaid_auth.tenants.django_tenants_tenant").
    "TENANT_RESOLVER": None,
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


@dataclass(frozen=True)
class TypedSettings:
    """``GETPAID_AUTH`` converted once to the types the code uses (``getpaid_settings.typed``).

    Rebuilt after every ``setting_changed``; a value that cannot be converted raises
    ``GetpaidAuthConfigurationError`` naming the setting (system check E007 reports the
    same problems at startup).
    """

    token_url: str
    cache_key_prefix: str
    allowed_api_hosts: tuple[str, ...]
    token_request_format: str
    client_auth_method: str
    token_request_timeout: tuple[float, float]
    api_timeout: tuple[float, float]
    token_request_retries: int
    retry_backoff: float
    retry_backoff_max: float
    max_retry_after: float
    api_retries: int
    local_cache_timeout: float
    lease_timeout: float
    wait_timeout: float
    config_error_backoff: float
    credential_recheck_interval: float
    token_request_deadline: float
    max_token_response_bytes: int
    max_background_refreshes: int
    unauthorized_refetch_pause: float


def _converted(name: str, value: Any, kind: Callable[[Any], Any]) -> Any:
    try:
        if kind is tuple:
            connect, read = value
            return (float(connect), float(read))
        converted = kind(value)
    except (TypeError, ValueError):
        from .exceptions import GetpaidAuthConfigurationError

        raise GetpaidAuthConfigurationError(
            f"{SETTING_NAME}[{name!r}] is {value!r}, which is not a valid "
            f"{'(connect, read) pair' if kind is tuple else kind.__name__}; "
            "run `manage.py check` for the allowed values."
        ) from None
    return converted


class GetpaidAuthSettings:
    """Always-fresh view of ``settings.GETPAID_AUTH`` merged over ``DEFAULTS``.

    ``getpaid_settings.NAME`` is the raw value as configured; ``getpaid_settings.typed``
    holds every value converted once (float, int, tuples), for the code to use.
    """

    _typed: TypedSettings | None = None

    @property
    def typed(self) -> TypedSettings:
        typed = self._typed
        if typed is None:
            typed = self._typed = self._convert()
        return typed

    def _convert(self) -> TypedSettings:
        user = self._user()

        def value(name: str, kind: Callable[[Any], Any]) -> Any:
            return _converted(name, user.get(name, DEFAULTS[name]), kind)

        return TypedSettings(
            token_url=value("TOKEN_URL", str),
            cache_key_prefix=value("CACHE_KEY_PREFIX", str),
            allowed_api_hosts=tuple(str(h) for h in value("ALLOWED_API_HOSTS", list)),
            token_request_format=value("TOKEN_REQUEST_FORMAT", str),
            client_auth_method=value("CLIENT_AUTH_METHOD", str),
            token_request_timeout=value("TOKEN_REQUEST_TIMEOUT", tuple),
            api_timeout=value("API_TIMEOUT", tuple),
            token_request_retries=max(0, value("TOKEN_REQUEST_RETRIES", int)),
            retry_backoff=value("RETRY_BACKOFF", float),
            retry_backoff_max=value("RETRY_BACKOFF_MAX", float),
            max_retry_after=value("MAX_RETRY_AFTER", float),
            api_retries=max(0, value("API_RETRIES", int)),
            local_cache_timeout=value("LOCAL_CACHE_TIMEOUT", float),
            lease_timeout=value("LEASE_TIMEOUT", float),
            wait_timeout=value("WAIT_TIMEOUT", float),
            config_error_backoff=value("CONFIG_ERROR_BACKOFF", float),
            credential_recheck_interval=value("CREDENTIAL_RECHECK_INTERVAL", float),
            token_request_deadline=max(0.0, value("TOKEN_REQUEST_DEADLINE", float)),
            max_token_response_bytes=max(0, value("MAX_TOKEN_RESPONSE_BYTES", int)),
            max_background_refreshes=max(1, value("MAX_BACKGROUND_REFRESHES", int)),
            unauthorized_refetch_pause=value("UNAUTHORIZED_REFETCH_PAUSE", float),
        )

    def forget_typed(self) -> None:
        self._typed = None

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
        getpaid_settings.forget_typed()
        for callback in _reset_callbacks:
            callback()
