"""The current tenant, for ``get_session()`` / ``get_token()`` called without one.

``GETPAID_AUTH["TENANT_RESOLVER"]`` names a callable (dotted path) that takes no
arguments and returns the current tenant (an instance of the tenant model, or its key
string), or ``None`` when there is none. Without a resolver, omitting the tenant is an
error, as before. ``django_tenants_tenant`` is the resolver for django-tenants projects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django.utils.module_loading import import_string

from .conf import SETTING_NAME, getpaid_settings
from .exceptions import GetpaidAuthConfigurationError, NoCurrentTenantError

Resolver = Callable[[], Any]


def resolver() -> Resolver | None:
    """The configured resolver, imported (or None when the setting is empty)."""
    path: object = getpaid_settings.TENANT_RESOLVER
    if not path:
        return None
    if callable(path):
        return cast(Resolver, path)
    try:
        found: object = import_string(str(path))
    except ImportError as exc:
        raise GetpaidAuthConfigurationError(
            f"{SETTING_NAME}['TENANT_RESOLVER'] is {path!r}, which cannot be imported: {exc}"
        ) from None
    if not callable(found):
        raise GetpaidAuthConfigurationError(
            f"{SETTING_NAME}['TENANT_RESOLVER'] is {path!r}, which is not callable."
        )
    return cast(Resolver, found)


def current_tenant() -> Any:
    """The tenant the configured resolver returns; a typed error when there is none."""
    resolve = resolver()
    if resolve is None:
        raise NoCurrentTenantError(
            "No tenant given: pass the tenant (or its key) to get_session/get_token, or set "
            f"{SETTING_NAME}['TENANT_RESOLVER'] to a function that returns the current one "
            '(django-tenants: "django_getpaid_auth.tenants.django_tenants_tenant").'
        )
    tenant = resolve()
    if tenant is None:
        raise NoCurrentTenantError(
            "No tenant given and the tenant resolver found no current tenant "
            f"({SETTING_NAME}['TENANT_RESOLVER'] = {getpaid_settings.TENANT_RESOLVER!r}); "
            "outside a tenant's request or tenant_context, pass the tenant explicitly."
        )
    return tenant


def django_tenants_tenant() -> Any:
    """django-tenants: the tenant of the current database connection (``connection.tenant``).

    ``None`` in the public schema (its tenant is the project itself, not a getpaid
    customer) and outside any tenant.
    """
    from django.db import connection

    tenant = getattr(connection, "tenant", None)
    schema = getattr(connection, "schema_name", None)
    if tenant is None or getattr(tenant, "pk", None) is None:
        return None
    try:
        from django_tenants.utils import get_public_schema_name
    except ImportError:  # pragma: no cover - the resolver is only configured with it
        return tenant
    return None if schema == get_public_schema_name() else tenant
