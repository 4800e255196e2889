"""Small helpers to create tenants and credentials in tests."""

from __future__ import annotations

import itertools

from django_getpaid_auth.models import ClientCredential, Tenant

_counter = itertools.count(1)


def make_tenant(slug: str | None = None, name: str | None = None) -> Tenant:
    n = next(_counter)
    slug = slug or f"tenant-{n}"
    return Tenant.objects.create(slug=slug, name=name or slug.title())


def make_credential(
    tenant: Tenant | None = None,
    *,
    environment: str = "sandbox",
    client_id: str | None = None,
    client_secret: str = "s3cret-value",
    scopes: str = "payments:read",
    is_active: bool = True,
) -> ClientCredential:
    tenant = tenant or make_tenant()
    return ClientCredential.objects.create(
        tenant=tenant,
        environment=environment,
        client_id=client_id or f"client-{tenant.slug}-{environment}",
        client_secret=client_secret,
        scopes=scopes,
        is_active=is_active,
    )
