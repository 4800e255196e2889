"""System checks (``manage.py check``) for GETPAID_AUTH.

Ids are stable: E001 no key, E002 malformed key, E003 environments, E004 cache alias,
E005 token URL, E006 tenant key field, E007 bad setting value, W001 process-local cache,
W002 unknown setting name; database-tagged
(``check --database default``): E010 malformed stored scope, W010 unknown scope,
E011 stored environment not configured.
"""

from __future__ import annotations

import math
from difflib import get_close_matches
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS, SETTING_NAME, getpaid_settings
from .crypto import configured_keys, key_problems
from .scopes import malformed_scopes, split_scopes, unknown_scopes

PROCESS_LOCAL_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018  (raises ValueError for a port that is not 0-65535)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_host_entry(value: Any) -> bool:
    """``"host"`` or ``"host:port"``, as ALLOWED_API_HOSTS takes them."""
    return isinstance(value, str) and bool(value) and _is_http_url(f"https://{value}")


@register()
def check_tenant_resolver(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from .exceptions import GetpaidAuthConfigurationError
    from .tenants import resolver

    try:
        resolver()
    except GetpaidAuthConfigurationError as exc:
        return [
            Error(
                str(exc),
                hint="Name a function that takes no arguments and returns the current tenant.",
                id="django_getpaid_auth.E007",
            )
        ]
    return []


@register()
def check_allowed_api_hosts(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    hosts = getpaid_settings.ALLOWED_API_HOSTS
    if not isinstance(hosts, (list, tuple)):
        return [
            Error(
                f'{SETTING_NAME}["ALLOWED_API_HOSTS"] must be a list of "host" or '
                '"host:port" strings.',
                id="django_getpaid_auth.E007",
            )
        ]
    return [
        Error(
            f'{SETTING_NAME}["ALLOWED_API_HOSTS"] has {entry!r}, which is not "host" or '
            '"host:port" (port 0-65535).',
            hint="Write the host name only, without a scheme or path.",
            id="django_getpaid_auth.E007",
        )
        for entry in hosts
        if not _is_host_entry(entry) or "/" in entry or "@" in entry
    ]


@register(Tags.security)
def check_encryption_keys(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    keys = configured_keys()
    if not keys:
        return [
            Error(
                f'No encryption key: {SETTING_NAME}["ENCRYPTION_KEYS"] is empty.',
                hint=(
                    'Generate a key with `python -c "from cryptography.fernet import Fernet; '
                    'print(Fernet.generate_key().decode())"` and add it. There is no fallback '
                    "to SECRET_KEY, by design."
                ),
                id="django_getpaid_auth.E001",
            )
        ]
    return [
        Error(
            problem,
            hint="Replace it with a key from Fernet.generate_key().",
            id="django_getpaid_auth.E002",
        )
        for problem in key_problems(keys)
    ]


@register()
def check_environments(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    configured = getpaid_settings.ENVIRONMENTS
    if not isinstance(configured, dict) or not configured:
        return [
            Error(
                f'{SETTING_NAME}["ENVIRONMENTS"] must be a dict with "live" and/or "sandbox".',
                id="django_getpaid_auth.E003",
            )
        ]
    for name, values in getpaid_settings.environments.items():
        if name not in ("live", "sandbox"):
            errors.append(
                Error(
                    f'Unknown environment {name!r} in {SETTING_NAME}["ENVIRONMENTS"].',
                    hint='getpaid has two environments: "live" and "sandbox".',
                    id="django_getpaid_auth.E003",
                )
            )
            continue
        for key in ("AUDIENCE", "API_URL"):
            if not _is_http_url(values.get(key)):
                errors.append(
                    Error(
                        f'{SETTING_NAME}["ENVIRONMENTS"]["{name}"]["{key}"] must be an http(s) '
                        "URL.",
                        id="django_getpaid_auth.E003",
                    )
                )
    if not _is_http_url(getpaid_settings.TOKEN_URL):
        errors.append(
            Error(
                f'{SETTING_NAME}["TOKEN_URL"] must be an http(s) URL.',
                id="django_getpaid_auth.E005",
            )
        )
    return errors


CHOICES = {
    "TOKEN_REQUEST_FORMAT": ("json", "form"),
    "CLIENT_AUTH_METHOD": ("client_secret_post", "client_secret_basic"),
}


# name -> (type, lowest, highest or None): a wrong number must fail at startup, not at
# the first token request (an endless wait, a crash in a refresh thread).
NUMBERS: dict[str, tuple[type, float, float | None]] = {
    "TOKEN_REQUEST_RETRIES": (int, 0, 10),
    "RETRY_BACKOFF": (float, 0, None),
    "RETRY_BACKOFF_MAX": (float, 0, None),
    "MAX_RETRY_AFTER": (float, 0, 3600),
    "API_RETRIES": (int, 0, 10),
    "REFRESH_MARGIN": (float, 0, None),
    "REFRESH_MARGIN_RATIO": (float, 0, 0.5),
    "CLOCK_SKEW": (float, 0, None),
    "LOCAL_CACHE_TIMEOUT": (float, 0, None),
    "LEASE_TIMEOUT": (float, 0.001, None),
    "WAIT_TIMEOUT": (float, 0.001, None),
    "CONFIG_ERROR_BACKOFF": (float, 0, None),
    "CREDENTIAL_RECHECK_INTERVAL": (float, 0.001, None),
    "TOKEN_REQUEST_DEADLINE": (float, 0.001, None),
    "MAX_TOKEN_RESPONSE_BYTES": (int, 1024, None),
    "MAX_BACKGROUND_REFRESHES": (int, 1, None),
    "UNAUTHORIZED_REFETCH_PAUSE": (float, 0, None),
}
PAIRS = ("TOKEN_REQUEST_TIMEOUT", "API_TIMEOUT")


def _number_ok(value: Any, kind: type, low: float, high: float | None) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return False
    return math.isfinite(value) and value >= low and (high is None or value <= high)


def _number_hint(kind: type, low: float, high: float | None) -> str:
    what = "an integer" if kind is int else "a number"
    if high is not None:
        return f"Use {what} from {low:g} to {high:g}."
    return f"Use {what} of at least {low:g}."


@register()
def check_setting_names_and_choices(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A typo in a GETPAID_AUTH key or value must not be silently ignored."""
    user = getattr(settings, SETTING_NAME, None)
    if user is None:
        return []
    if not isinstance(user, dict):
        return [Error(f"{SETTING_NAME} must be a dict.", id="django_getpaid_auth.E007")]
    messages: list[CheckMessage] = []
    for name in sorted(set(user) - set(DEFAULTS)):
        close = get_close_matches(name, DEFAULTS, n=1)
        messages.append(
            Warning(
                f"Unknown setting {SETTING_NAME}[{name!r}] is ignored.",
                hint=f"Did you mean {close[0]!r}?" if close else "See the settings reference.",
                id="django_getpaid_auth.W002",
            )
        )
    for name, (kind, low, high) in NUMBERS.items():
        if name in user and not _number_ok(user[name], kind, low, high):
            messages.append(
                Error(
                    f"{SETTING_NAME}[{name!r}] is {user[name]!r}.",
                    hint=_number_hint(kind, low, high),
                    id="django_getpaid_auth.E007",
                )
            )
    for name in PAIRS:
        value = user.get(name)
        if name in user and not (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(_number_ok(v, float, 0.001, None) for v in value)
        ):
            messages.append(
                Error(
                    f"{SETTING_NAME}[{name!r}] is {value!r}.",
                    hint="Use a (connect, read) pair of positive seconds, e.g. (5.0, 15.0).",
                    id="django_getpaid_auth.E007",
                )
            )
    for name, allowed in CHOICES.items():
        if name in user and user[name] not in allowed:
            messages.append(
                Error(
                    f"{SETTING_NAME}[{name!r}] is {user[name]!r}.",
                    hint=f"Use one of: {', '.join(allowed)}.",
                    id="django_getpaid_auth.E007",
                )
            )
    return messages


@register(Tags.caches)
def check_cache(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    alias = getpaid_settings.CACHE_ALIAS
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        return [
            Error(
                f'{SETTING_NAME}["CACHE_ALIAS"] is {alias!r}, which is not in settings.CACHES.',
                hint=f"Use one of: {', '.join(sorted(caches)) or '(none configured)'}.",
                id="django_getpaid_auth.E004",
            )
        ]
    backend = caches[alias].get("BACKEND", "")
    if backend in PROCESS_LOCAL_CACHES:
        return [
            Warning(
                f"Cache {alias!r} ({backend.rsplit('.', 1)[-1]}) is local to one process (Dummy"
                "Cache stores nothing at all): every worker process will request its own "
                "getpaid tokens.",
                hint="Use Redis or Memcached in production so all workers share one token.",
                id="django_getpaid_auth.W001",
            )
        ]
    return []


@register()
def check_tenant_key_field(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.core.exceptions import FieldDoesNotExist

    from .models import get_tenant_model

    try:
        model = get_tenant_model()
    except (LookupError, ValueError) as exc:
        return [Error(f"GETPAID_AUTH_TENANT_MODEL: {exc}", id="django_getpaid_auth.E006")]
    name = getpaid_settings.TENANT_KEY_FIELD
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return [
            Error(
                f'{SETTING_NAME}["TENANT_KEY_FIELD"] is {name!r}, which {model._meta.label} lacks.',
                hint="Name a unique field of the tenant model (for example slug).",
                id="django_getpaid_auth.E006",
            )
        ]
    if not (getattr(field, "unique", False) or getattr(field, "primary_key", False)):
        return [
            Error(
                f"{model._meta.label}.{name} (TENANT_KEY_FIELD) is not unique.",
                hint="get_session(key) must find exactly one tenant; use a unique field.",
                id="django_getpaid_auth.E006",
            )
        ]
    return []


@register(Tags.database)
def check_stored_credentials(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """Runs only with ``check --database``: validates stored scopes and environments."""
    if not databases:
        return []
    from django.db import connections

    from .models import ClientCredential

    messages: list[CheckMessage] = []
    environments = getpaid_settings.environments
    table = ClientCredential._meta.db_table
    for database in databases:
        if table not in connections[database].introspection.table_names():
            continue  # not migrated yet (migrate runs database checks first)
        rows = ClientCredential.objects.using(database).values_list("pk", "environment", "scopes")
        for pk, environment, scopes in rows:
            scope_list = split_scopes(scopes)
            bad = malformed_scopes(scope_list)
            if bad:
                messages.append(
                    Error(
                        f"ClientCredential pk={pk} has malformed scope(s): {', '.join(bad)}.",
                        hint="Scopes look like resource:read or resource:read_write.",
                        id="django_getpaid_auth.E010",
                    )
                )
            unknown = unknown_scopes(scope_list)
            if unknown:
                messages.append(
                    Warning(
                        f"ClientCredential pk={pk} requests scope(s) getpaid does not list: "
                        f"{', '.join(unknown)}.",
                        hint="Allowed, but check the spelling against getpaid's scope list.",
                        id="django_getpaid_auth.W010",
                    )
                )
            if environment not in environments:
                messages.append(
                    Error(
                        f"ClientCredential pk={pk} uses environment {environment!r}, which "
                        f'{SETTING_NAME}["ENVIRONMENTS"] does not define.',
                        id="django_getpaid_auth.E011",
                    )
                )
    return messages
