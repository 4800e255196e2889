"""get_session() / get_token() without a tenant: the current one, from TENANT_RESOLVER."""

from __future__ import annotations

import contextvars

import pytest
import responses

from django_getpaid_auth import get_session, get_token, invalidate_token
from django_getpaid_auth.exceptions import GetpaidAuthConfigurationError, NoCurrentTenantError
from django_getpaid_auth.testing import TokenEndpoint
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

API = "https://api.sandbox.getpaid.test"

# What a request-tenant middleware (django-organizations style) would set per request.
current = contextvars.ContextVar("current_tenant", default=None)


def request_tenant():
    return current.get()


@pytest.fixture
def endpoint(rsps):
    rsps.add(responses.GET, f"{API}/v2/payments/pay_1", json={"id": "pay_1"})
    return TokenEndpoint(rsps)


@pytest.fixture
def with_resolver(settings):
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "TENANT_RESOLVER": "tests.test_current_tenant.request_tenant",
    }


def test_without_a_resolver_omitting_the_tenant_is_a_clear_error(endpoint):
    with pytest.raises(NoCurrentTenantError, match="TENANT_RESOLVER"):
        get_session()
    with pytest.raises(NoCurrentTenantError):
        get_token()
    assert endpoint.count == 0


def test_the_resolver_supplies_the_current_tenant(endpoint, with_resolver):
    acme, other = make_tenant("acme"), make_tenant("other")
    make_credential(acme, client_id="acme-client")
    make_credential(other, client_id="other-client")
    token = current.set(acme)
    try:
        session = get_session()
        assert session.get("/v2/payments/pay_1").json() == {"id": "pay_1"}
        assert get_token().value == endpoint.issued[0]
    finally:
        current.reset(token)
    token = current.set("other")  # a key string works too
    try:
        get_token()
        invalidate_token()
    finally:
        current.reset(token)
    assert endpoint.client_ids() == ["acme-client", "other-client"]
    # A session keeps the tenant it was made for, whatever is current later.
    assert session.tenant == acme


def test_a_resolver_that_finds_no_tenant_is_a_clear_error(endpoint, with_resolver):
    with pytest.raises(NoCurrentTenantError, match="found no current tenant"):
        get_session()


def test_an_explicit_tenant_wins_over_the_resolver(endpoint, with_resolver):
    acme = make_tenant("acme")
    make_credential(acme, client_id="acme-client")
    get_token("acme")
    assert endpoint.client_ids() == ["acme-client"]


@pytest.mark.parametrize(
    "path", ["tests.test_current_tenant.missing", "tests.test_current_tenant.API"]
)
def test_a_bad_resolver_path_is_a_configuration_error(settings, path):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TENANT_RESOLVER": path}
    with pytest.raises(GetpaidAuthConfigurationError, match="TENANT_RESOLVER"):
        get_token()
