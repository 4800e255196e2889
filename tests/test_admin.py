"""The admin: every page as a superuser and as a view-only user, and never a secret.

A canary secret is stored and every response body is searched for it.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import responses
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import django_getpaid_auth
from django_getpaid_auth import admin as gp_admin
from django_getpaid_auth import cache_backend, credentials, crypto, token_store
from django_getpaid_auth.exceptions import InvalidClientError
from django_getpaid_auth.models import ClientCredential, Tenant, mask
from django_getpaid_auth.testing import TokenEndpoint
from django_getpaid_auth.tokens import AccessToken
from tests.factories import make_credential, make_tenant
from tests.settings import TEST_KEY_A, TEST_KEY_B

pytestmark = pytest.mark.django_db

CRED = "django_getpaid_auth_clientcredential"
TENANT = "django_getpaid_auth_tenant"


def url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def changelist_url() -> str:
    return url(f"{CRED}_changelist")


def change_url(credential: ClientCredential) -> str:
    return url(f"{CRED}_change", credential.pk)


def body(response) -> str:
    return response.content.decode()


def raw_secret(pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT client_secret FROM {ClientCredential._meta.db_table} WHERE id = %s", [pk]
        )
        return cursor.fetchone()[0]


def messages_of(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", None)


@pytest.fixture
def viewer(django_user_model):
    """Staff with view permissions only."""
    user = django_user_model.objects.create_user("viewer", "v@example.com", None, is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_clientcredential"),
        Permission.objects.get(codename="view_tenant"),
    )
    return user


@pytest.fixture
def credential(canary):
    tenant = make_tenant("acme", "Acme Ltd")
    return make_credential(
        tenant,
        client_id="acme-client-id-0123456789",
        client_secret=canary,
        scopes="payments:read accounts:read",
    )


@pytest.fixture
def admin_client_for(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def cache_token(credential: ClientCredential, lifetime: int = 3600) -> AccessToken:
    """Put a token for ``credential`` in the cache as the token service would."""
    now = timezone.now()
    token = AccessToken(
        value=f"TOKEN-VALUE-{credential.pk}-xyz",
        token_type="Bearer",
        expires_at=now + timedelta(seconds=lifetime),
        scopes=frozenset(credential.scope_list),
        obtained_at=now,
    )
    token_store.store(credentials.snapshot_of(credential, 0), token)
    return token


def expected_title_time(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


# --- every page, both users -------------------------------------------------------------


def all_pages(credential: ClientCredential) -> dict[str, str]:
    return {
        "changelist": changelist_url(),
        "add": url(f"{CRED}_add"),
        "change": change_url(credential),
        "delete": url(f"{CRED}_delete", credential.pk),
        "history": url(f"{CRED}_history", credential.pk),
        "tenant_changelist": url(f"{TENANT}_changelist"),
        "tenant_change": url(f"{TENANT}_change", credential.tenant_id),
        "tenant_add": url(f"{TENANT}_add"),
        "tenant_history": url(f"{TENANT}_history", credential.tenant_id),
    }


def test_every_page_as_superuser_renders_without_secret(
    admin_client_for, superuser, credential, canary
):
    client = admin_client_for(superuser)
    token = cache_token(credential)
    for name, page in all_pages(credential).items():
        response = client.get(page)
        assert response.status_code == 200, name
        html = body(response)
        assert canary not in html, name
        assert token.value not in html, name
        assert credential.__dict__["client_secret"] not in html, name  # not even ciphertext


VIEWER_STATUS = {
    "changelist": 200,
    "add": 403,
    "change": 200,
    "delete": 403,
    "history": 200,
    "tenant_changelist": 200,
    "tenant_change": 200,
    "tenant_add": 403,
    "tenant_history": 200,
}


def test_every_page_as_view_only_user(admin_client_for, viewer, credential, canary):
    client = admin_client_for(viewer)
    for name, page in all_pages(credential).items():
        response = client.get(page)
        assert response.status_code == VIEWER_STATUS[name], name
        assert canary not in body(response), name


def test_view_only_change_page_shows_values_read_only(admin_client_for, viewer, credential):
    html = body(admin_client_for(viewer).get(change_url(credential)))
    assert 'name="new_client_secret"' not in html
    assert "stored (write-only)" in html
    assert "payments:read" in html
    assert "https://api.sandbox.getpaid.io" in html  # audience
    assert "https://api.sandbox.getpaid.test" in html  # API URL


def test_change_page_shows_audience_and_api_url_read_only(admin_client_for, superuser, credential):
    html = body(admin_client_for(superuser).get(change_url(credential)))
    assert "https://api.sandbox.getpaid.io" in html
    assert "https://api.sandbox.getpaid.test" in html
    assert 'name="audience"' not in html and 'name="api_url"' not in html
    assert 'name="client_secret"' not in html
    assert 'name="new_client_secret"' in html
    assert 'type="password"' in html


def test_view_only_user_gets_no_actions(admin_client_for, viewer, credential):
    html = body(admin_client_for(viewer).get(changelist_url()))
    assert 'value="test_connection"' not in html
    assert 'value="clear_cached_token"' not in html
    assert 'value="delete_selected"' not in html


def test_view_only_user_cannot_run_actions_by_crafted_post(
    admin_client_for, viewer, credential, fake_getpaid_settings, canary
):
    fake = fake_getpaid_settings
    fake.register_client(credential.client_id, canary)
    token = cache_token(credential)
    client = admin_client_for(viewer)
    for action in ("test_connection", "clear_cached_token"):
        response = client.post(
            changelist_url(), {"action": action, "_selected_action": [credential.pk]}, follow=True
        )
        assert response.status_code == 200
        assert canary not in body(response)
    assert fake.token_request_count() == 0
    credential.refresh_from_db()
    assert credential.last_checked_at is None
    # the cached token was not cleared either
    assert token_store.cached_entries([credentials.snapshot_of(credential, 0)])
    assert token.value not in body(response)


def test_action_permissions_are_separate(admin_client_for, django_user_model, credential):
    user = django_user_model.objects.create_user("ops", "o@example.com", None, is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_clientcredential"),
        Permission.objects.get(codename="clear_token"),
    )
    html = body(admin_client_for(user).get(changelist_url()))
    assert 'value="clear_cached_token"' in html
    assert 'value="test_connection"' not in html


# --- the list ---------------------------------------------------------------------------


def test_list_columns(admin_client_for, superuser, credential):
    live = make_credential(credential.tenant, environment="live", client_id="live-client-abcdefgh")
    html = body(admin_client_for(superuser).get(changelist_url()))
    assert mask(credential.client_id) in html
    assert credential.client_id not in html
    assert live.client_id not in html
    assert re.search(r'<span class="gpa-badge gpa-badge-red">LIVE</span>', html)
    assert "django_getpaid_auth/admin.css" in html  # the badge colours come from here
    assert "payments:read" in html and "accounts:read" in html
    assert "no token" in html
    assert "never" in html  # last check


def test_list_shows_expiry_of_a_token_fetched_through_get_token(
    admin_client_for, superuser, credential
):
    with responses.RequestsMock() as rsps:
        endpoint = TokenEndpoint(rsps, expires_in=3600)
        token = django_getpaid_auth.get_token(credential.tenant)
        assert endpoint.count == 1
    html = body(admin_client_for(superuser).get(changelist_url()))
    match = re.search(r'title="Expires at ([^"]+)">expires in (\d\d):(\d\d)<', html)
    assert match, html
    assert match.group(1) == expected_title_time(token.expires_at)
    assert 58 <= int(match.group(2)) <= 59
    assert token.value not in html
    # and on the change page
    html = body(admin_client_for(superuser).get(change_url(credential)))
    assert "expires in" in html and expected_title_time(token.expires_at) in html
    assert token.value not in html


def test_list_shows_expired_token(admin_client_for, superuser, credential, fake_clock):
    cache_token(credential, lifetime=120)
    fake_clock.advance(300)
    html = body(admin_client_for(superuser).get(changelist_url()))
    assert ">expired<" in html
    assert "expires in" not in html


def test_list_shows_last_token_error(admin_client_for, superuser, credential):
    with responses.RequestsMock() as rsps:
        endpoint = TokenEndpoint(rsps)
        endpoint.fail_next(
            (
                401,
                {"Content-Type": "application/json"},
                '{"error":"access_denied","error_description":"Unauthorized"}',
            )
        )
        with pytest.raises(InvalidClientError):
            django_getpaid_auth.get_token(credential.tenant)
    html = body(admin_client_for(superuser).get(changelist_url()))
    assert "last error:" in html


def test_list_reads_the_cache_once_per_page(admin_client_for, superuser, monkeypatch):
    rows = [make_credential() for _ in range(5)]
    for row in rows[:3]:
        cache_token(row)
    calls = []
    real_get_many = cache_backend.get_many
    monkeypatch.setattr(
        cache_backend, "get_many", lambda names: calls.append("get_many") or real_get_many(names)
    )
    monkeypatch.setattr(cache_backend, "get", lambda *a, **k: calls.append("get"))
    html = body(admin_client_for(superuser).get(changelist_url()))
    assert calls == ["get_many"]
    assert html.count("expires in") == 3
    assert html.count("no token") == 2


def _bulk_credentials(count: int) -> None:
    tenants = Tenant.objects.bulk_create(
        [Tenant(name=f"Bulk {i}", slug=f"bulk-{i}") for i in range(count)]
    )
    creds = ClientCredential.objects.bulk_create(
        [
            ClientCredential(
                tenant=t,
                environment="live" if i % 3 == 0 else "sandbox",
                client_id=f"bulk-client-{i:04d}",
                client_secret=f"bulk-secret-{i}",
                scopes="payments:read",
                last_check_ok=[None, True, False][i % 3],
                last_checked_at=None if i % 3 == 0 else timezone.now(),
            )
            for i, t in enumerate(tenants)
        ]
    )
    for row in ClientCredential.objects.select_related("tenant").filter(
        pk__in=[c.pk for c in creds[:20]]
    ):
        cache_token(row)


@pytest.mark.parametrize("page", ["", "?health=failing", "?environment__exact=live&q=bulk"])
def test_list_query_count_does_not_grow_with_rows(admin_client_for, superuser, page):
    client = admin_client_for(superuser)
    _bulk_credentials(1)
    client.get(changelist_url())  # warm up session/content types
    with CaptureQueriesContext(connection) as one:
        assert client.get(changelist_url() + page).status_code == 200
    assert ClientCredential.objects.count() == 1
    Tenant.objects.all().delete()
    _bulk_credentials(200)
    with CaptureQueriesContext(connection) as many:
        response = client.get(changelist_url() + page)
    assert response.status_code == 200
    assert len(one.captured_queries) == len(many.captured_queries), [
        q["sql"] for q in many.captured_queries
    ]
    print(f"changelist{page}: {len(one)} queries with 1 row, {len(many)} with 200 rows")


def test_tenant_list_query_count_does_not_grow(admin_client_for, superuser):
    client = admin_client_for(superuser)
    _bulk_credentials(1)
    client.get(url(f"{TENANT}_changelist"))
    with CaptureQueriesContext(connection) as one:
        client.get(url(f"{TENANT}_changelist"))
    tenants = Tenant.objects.bulk_create([Tenant(name=f"T{i}", slug=f"t-{i}") for i in range(150)])
    ClientCredential.objects.bulk_create(
        [
            ClientCredential(tenant=t, client_id=f"c{i}", client_secret="x")
            for i, t in enumerate(tenants)
        ]
    )
    with CaptureQueriesContext(connection) as many:
        html = body(client.get(url(f"{TENANT}_changelist")))
    assert len(one) == len(many)
    assert '<td class="field-credential_count">1</td>' in html


def test_filters(admin_client_for, superuser):
    healthy = make_credential(client_id="healthy-client-1")
    failing = make_credential(client_id="failing-client-1")
    unchecked = make_credential(client_id="unchecked-client-1", environment="live")
    ClientCredential.objects.filter(pk=healthy.pk).update(last_check_ok=True)
    ClientCredential.objects.filter(pk=failing.pk).update(last_check_ok=False)
    client = admin_client_for(superuser)

    def listed(query: str) -> set[int]:
        response = client.get(changelist_url() + query)
        assert response.status_code == 200
        return {obj.pk for obj in response.context["cl"].result_list}

    assert listed("?health=healthy") == {healthy.pk}
    assert listed("?health=failing") == {failing.pk}
    assert listed("?health=unchecked") == {unchecked.pk}
    assert listed("?environment__exact=live") == {unchecked.pk}
    assert listed("") == {healthy.pk, failing.pk, unchecked.pk}
    ClientCredential.objects.filter(pk=healthy.pk).update(is_active=False)
    assert listed("?is_active__exact=0") == {healthy.pk}


def test_search_by_tenant_name_slug_and_client_id(admin_client_for, superuser):
    one = make_credential(make_tenant("north-wind", "Northwind Traders"), client_id="nw-client-1")
    two = make_credential(make_tenant("contoso", "Contoso"), client_id="contoso-client-2")
    client = admin_client_for(superuser)

    def found(q: str) -> set[int]:
        return {o.pk for o in client.get(changelist_url(), {"q": q}).context["cl"].result_list}

    assert found("Northwind") == {one.pk}
    assert found("north-wind") == {one.pk}
    assert found("contoso-client") == {two.pk}


def test_search_fields_follow_tenant_key_field(settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TENANT_KEY_FIELD": "name"}
    assert gp_admin.tenant_search_fields() == ["tenant__name"]
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TENANT_KEY_FIELD": "no_such_field"}
    assert gp_admin.tenant_search_fields() == ["tenant__name"]
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TENANT_KEY_FIELD": "slug"}
    assert gp_admin.tenant_search_fields() == ["tenant__name", "tenant__slug"]


def test_unknown_environment_shows_error_badge(admin_client_for, superuser, credential):
    ClientCredential.objects.filter(pk=credential.pk).update(environment="staging")
    client = admin_client_for(superuser)
    response = client.get(changelist_url())
    assert response.status_code == 200
    assert "does not define" in body(response)
    assert client.get(change_url(credential)).status_code == 200


# --- the form ---------------------------------------------------------------------------


def form_data(tenant: Tenant, **overrides) -> dict:
    data = {
        "tenant": tenant.pk,
        "environment": "sandbox",
        "client_id": "form-client-id-123456",
        "new_client_secret": "",
        "known_scopes": ["payments:read"],
        "other_scopes": "",
        "is_active": "on",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_add_stores_secret_encrypted(admin_client_for, superuser, canary):
    tenant = make_tenant()
    response = admin_client_for(superuser).post(
        url(f"{CRED}_add"), form_data(tenant, new_client_secret=canary), follow=True
    )
    assert response.status_code == 200
    assert canary not in body(response)
    credential = ClientCredential.objects.get(tenant=tenant)
    stored = raw_secret(credential.pk)
    assert canary not in stored
    assert crypto.decrypt(stored) == canary
    assert credential.secret_changed_at is not None
    assert credential.scopes == "payments:read"
    entry = LogEntry.objects.get(object_id=str(credential.pk))
    assert canary not in entry.change_message and canary not in entry.object_repr


def test_add_requires_a_secret(admin_client_for, superuser):
    tenant = make_tenant()
    response = admin_client_for(superuser).post(url(f"{CRED}_add"), form_data(tenant))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["new_client_secret"]
    assert not ClientCredential.objects.exists()


def test_form_error_does_not_echo_the_secret(admin_client_for, superuser, canary):
    tenant = make_tenant()
    response = admin_client_for(superuser).post(
        url(f"{CRED}_add"), form_data(tenant, new_client_secret=canary, client_id="")
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["client_id"]
    assert canary not in body(response)


def test_change_with_blank_secret_keeps_it(admin_client_for, superuser, credential, canary):
    before = raw_secret(credential.pk)
    changed_at = credential.secret_changed_at
    response = admin_client_for(superuser).post(
        change_url(credential),
        form_data(
            credential.tenant, client_id="renamed-client-id-42", known_scopes=["payments:read"]
        ),
        follow=True,
    )
    assert response.status_code == 200
    assert canary not in body(response)
    credential.refresh_from_db()
    assert credential.client_id == "renamed-client-id-42"
    assert raw_secret(credential.pk) == before
    assert credential.client_secret == canary
    assert credential.secret_changed_at == changed_at
    entry = LogEntry.objects.filter(object_id=str(credential.pk)).latest("pk")
    assert "client secret" not in entry.get_change_message()


def test_change_with_new_secret_replaces_it(admin_client_for, superuser, credential, canary):
    old_time = timezone.now() - timedelta(days=30)
    ClientCredential.objects.filter(pk=credential.pk).update(secret_changed_at=old_time)
    new_secret = canary + "-rotated"
    client = admin_client_for(superuser)
    page = body(client.get(change_url(credential)))
    assert "last changed" in page  # help text names when the secret was last changed
    response = client.post(
        change_url(credential),
        form_data(
            credential.tenant,
            client_id=credential.client_id,
            new_client_secret=new_secret,
            known_scopes=["payments:read", "accounts:read"],
        ),
        follow=True,
    )
    assert response.status_code == 200
    assert canary not in body(response)
    credential.refresh_from_db()
    assert credential.client_secret == new_secret
    assert credential.secret_changed_at > old_time
    entry = LogEntry.objects.filter(object_id=str(credential.pk)).latest("pk")
    assert entry.get_change_message() == "Changed client secret."
    assert canary not in entry.change_message and canary not in entry.object_repr
    history = body(client.get(url(f"{CRED}_history", credential.pk)))
    assert "Changed client secret." in history
    assert canary not in history


def test_duplicate_active_credential_is_a_form_error(
    admin_client_for, superuser, credential, canary
):
    response = admin_client_for(superuser).post(
        url(f"{CRED}_add"),
        form_data(credential.tenant, client_id="second-client-id", new_client_secret=canary),
    )
    assert response.status_code == 200
    assert "already has an active credential" in body(response)
    assert canary not in body(response)
    assert ClientCredential.objects.count() == 1


def test_scope_checkboxes_and_other_scopes_round_trip(admin_client_for, superuser, canary):
    tenant = make_tenant()
    client = admin_client_for(superuser)
    response = client.post(
        url(f"{CRED}_add"),
        form_data(
            tenant,
            new_client_secret=canary,
            known_scopes=["payments:read", "accounts:read"],
            other_scopes="refunds:read, payments:read",
        ),
        follow=True,
    )
    warnings = [m for lvl, m in messages_of(response) if lvl == "warning"]
    assert len(warnings) == 1 and "refunds:read" in warnings[0]
    credential = ClientCredential.objects.get(tenant=tenant)
    assert credential.scope_list == ["accounts:read", "payments:read", "refunds:read"]
    form = client.get(change_url(credential)).context["adminform"].form
    assert form.initial["known_scopes"] == ["accounts:read", "payments:read"]
    assert form.initial["other_scopes"] == "refunds:read"
    html = body(client.get(change_url(credential)))
    assert re.search(r'<input[^>]*value="accounts:read"[^>]*checked', html)
    assert not re.search(r'<input[^>]*value="payments:read_write"[^>]*checked', html)
    assert "Read payments and checkouts." in html  # the scope's description


def test_malformed_other_scope_is_a_form_error(admin_client_for, superuser, canary):
    tenant = make_tenant()
    response = admin_client_for(superuser).post(
        url(f"{CRED}_add"),
        form_data(tenant, new_client_secret=canary, other_scopes="Payments:write"),
    )
    assert response.status_code == 200
    assert "Malformed getpaid scope" in str(
        response.context["adminform"].form.errors["other_scopes"]
    )
    assert not ClientCredential.objects.exists()


def test_delete_credential(admin_client_for, superuser, credential, canary):
    client = admin_client_for(superuser)
    response = client.post(url(f"{CRED}_delete", credential.pk), {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert canary not in body(response)
    assert not ClientCredential.objects.exists()
    entry = LogEntry.objects.latest("pk")
    assert canary not in entry.object_repr


# --- actions ----------------------------------------------------------------------------


def run_action(client, action: str, *rows):
    return client.post(
        changelist_url(), {"action": action, "_selected_action": [r.pk for r in rows]}, follow=True
    )


def test_test_connection_success(
    admin_client_for, superuser, credential, fake_getpaid_settings, canary
):
    fake = fake_getpaid_settings
    fake.register_client(credential.client_id, canary, scopes="payments:read accounts:read")
    response = run_action(admin_client_for(superuser), "test_connection", credential)
    html = body(response)
    assert fake.token_request_count() == 1
    assert [lvl for lvl, _ in messages_of(response)] == ["success"]
    assert "connection OK" in html
    assert canary not in html
    credential.refresh_from_db()
    assert credential.last_check_ok is True
    assert credential.last_checked_at is not None
    assert set(credential.granted_scope_list) == {"payments:read", "accounts:read"}
    assert "expires in" in html  # the fresh token is cached and listed


def test_test_connection_wrong_secret(
    admin_client_for, superuser, credential, fake_getpaid_settings, canary
):
    fake = fake_getpaid_settings
    fake.register_client(credential.client_id, "the-real-secret")
    other = make_credential(client_id="other-client-id-999", client_secret="other-secret")
    fake.register_client(other.client_id, "other-secret")
    response = run_action(admin_client_for(superuser), "test_connection", credential, other)
    html = body(response)
    levels = sorted(lvl for lvl, _ in messages_of(response))
    assert levels == ["error", "success"]
    error = next(m for lvl, m in messages_of(response) if lvl == "error")
    assert "connection failed" in error
    assert "Check the client ID and secret" in error
    assert mask(credential.client_id) in error
    assert canary not in html and "the-real-secret" not in html
    credential.refresh_from_db()
    assert credential.last_check_ok is False
    assert "Check the client ID and secret" in credential.last_check_error
    other.refresh_from_db()
    assert other.last_check_ok is True


def test_clear_cached_token(admin_client_for, superuser, credential):
    cache_token(credential)
    snapshot = credentials.snapshot_of(credential, 0)
    assert token_store.cached_entries([snapshot])
    response = run_action(admin_client_for(superuser), "clear_cached_token", credential)
    assert [lvl for lvl, _ in messages_of(response)] == ["success"]
    assert token_store.cached_entries([snapshot]) == {}
    assert "no token" in body(response)


# --- a secret no configured key can decrypt ---------------------------------------------------


@pytest.fixture
def undecryptable(credential, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": [TEST_KEY_B]}
    return credential


def test_undecryptable_row_in_list_and_change_page(
    admin_client_for, superuser, undecryptable, canary
):
    client = admin_client_for(superuser)
    healthy = make_credential(client_id="still-fine-client")
    response = client.get(changelist_url())
    assert response.status_code == 200
    html = body(response)
    assert html.count(">cannot decrypt: check ENCRYPTION_KEYS<") == 1
    assert "no token" in html  # the healthy row is unaffected
    assert healthy.pk
    response = client.get(change_url(undecryptable))
    assert response.status_code == 200
    assert any(lvl == "warning" and "ENCRYPTION_KEYS" in m for lvl, m in messages_of(response))
    assert "cannot decrypt: check ENCRYPTION_KEYS" in body(response)
    assert canary not in body(response)


def test_undecryptable_row_test_connection_reports_error(
    admin_client_for, superuser, undecryptable, fake_getpaid_settings, canary
):
    fake = fake_getpaid_settings
    fake.register_client(undecryptable.client_id, canary)
    response = run_action(admin_client_for(superuser), "test_connection", undecryptable)
    assert response.status_code == 200
    [(level, text)] = messages_of(response)
    assert level == "error" and "cannot decrypt" in text
    assert fake.token_request_count() == 0
    # (refresh_from_db() would decrypt every field, which this row cannot)
    assert ClientCredential.objects.get(pk=undecryptable.pk).last_check_ok is False


def test_undecryptable_row_can_be_saved_and_fixed(
    admin_client_for, superuser, undecryptable, canary
):
    client = admin_client_for(superuser)
    before = raw_secret(undecryptable.pk)
    data = form_data(undecryptable.tenant, client_id=undecryptable.client_id)
    response = client.post(change_url(undecryptable), data, follow=True)
    assert response.status_code == 200
    assert raw_secret(undecryptable.pk) == before  # other fields saved, secret untouched
    data["new_client_secret"] = canary
    client.post(change_url(undecryptable), data, follow=True)
    undecryptable.refresh_from_db()
    assert undecryptable.client_secret == canary  # re-encrypted with the current key
    with pytest.raises(crypto.InvalidToken):
        from cryptography.fernet import Fernet

        Fernet(TEST_KEY_A).decrypt(raw_secret(undecryptable.pk).encode())


def test_non_ascii_stored_secret_change_page_renders_and_secret_can_be_reentered(
    admin_client_for, superuser, credential, canary
):
    """Legacy plaintext / corrupted data in the column: undecryptable, never a 500."""
    legacy = "pässwort-legacy-plaintext"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {ClientCredential._meta.db_table} SET client_secret = %s WHERE id = %s",
            [legacy, credential.pk],
        )
    client = admin_client_for(superuser)
    response = client.get(changelist_url())
    assert response.status_code == 200
    assert ">cannot decrypt: check ENCRYPTION_KEYS<" in body(response)
    response = client.get(change_url(credential))
    assert response.status_code == 200
    assert "cannot decrypt: check ENCRYPTION_KEYS" in body(response)
    assert legacy not in body(response)
    data = form_data(credential.tenant, client_id=credential.client_id)
    response = client.post(change_url(credential), {**data, "new_client_secret": canary})
    assert response.status_code == 302
    assert raw_secret(credential.pk).startswith("gAAAAA")
    assert ClientCredential.objects.get(pk=credential.pk).client_secret == canary


def test_activating_a_second_credential_on_its_change_page_is_a_form_error(
    admin_client_for, superuser, credential, canary
):
    spare = make_credential(credential.tenant, client_id="spare-client-id-1", is_active=False)
    data = form_data(credential.tenant, client_id=spare.client_id, is_active="on")
    response = admin_client_for(superuser).post(change_url(spare), data)
    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors() == [
        "This tenant already has an active credential for this environment."
    ]
    assert not ClientCredential.objects.get(pk=spare.pk).is_active


# --- tenant admin -------------------------------------------------------------------------


def inline_data(tenant_fields: dict, rows: list[dict]) -> dict:
    prefix = "getpaid_credentials"
    data = {
        **tenant_fields,
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(rows):
        for key, value in row.items():
            data[f"{prefix}-{i}-{key}"] = value
    return data


def test_tenant_change_page_masks_inline(admin_client_for, superuser, credential, canary):
    html = body(admin_client_for(superuser).get(url(f"{TENANT}_change", credential.tenant_id)))
    assert mask(credential.client_id) in html
    assert credential.client_id not in html
    assert "stored (write-only)" in html
    assert canary not in html


def test_tenant_add_with_inline_credential(admin_client_for, superuser, canary):
    row = {
        "environment": "live",
        "new_client_id": "inline-client-id-77",
        "new_client_secret": canary,
        "is_active": "on",
        "known_scopes": "payments:read",
        "other_scopes": "",
    }
    response = admin_client_for(superuser).post(
        url(f"{TENANT}_add"),
        inline_data({"name": "Inline Co", "slug": "inline-co"}, [row]),
        follow=True,
    )
    assert response.status_code == 200
    assert canary not in body(response)
    credential = ClientCredential.objects.get(tenant__slug="inline-co")
    assert credential.client_id == "inline-client-id-77"
    assert credential.client_secret == canary
    assert canary not in raw_secret(credential.pk)
    for entry in LogEntry.objects.all():
        assert canary not in entry.change_message and canary not in entry.object_repr


def existing_and_new_rows(credential: ClientCredential, new_row: dict) -> dict:
    """POST data of the tenant page: the saved credential (read-only: only its id) + a new row."""
    prefix = "getpaid_credentials"
    data = {
        "name": credential.tenant.name,
        "slug": credential.tenant.slug,
        f"{prefix}-TOTAL_FORMS": "2",
        f"{prefix}-INITIAL_FORMS": "1",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
        f"{prefix}-0-id": str(credential.pk),
        f"{prefix}-0-tenant": str(credential.tenant_id),
    }
    data.update({f"{prefix}-1-{key}": value for key, value in new_row.items()})
    return data


def new_inline_row(canary: str, environment: str) -> dict:
    return {
        "environment": environment,
        "new_client_id": f"second-{environment}-client",
        "new_client_secret": canary,
        "is_active": "on",
        "other_scopes": "",
    }


def test_tenant_inline_duplicate_active_is_a_form_error(
    admin_client_for, superuser, credential, canary
):
    data = existing_and_new_rows(credential, new_inline_row(canary, "sandbox"))
    response = admin_client_for(superuser).post(url(f"{TENANT}_change", credential.tenant_id), data)
    assert response.status_code == 200
    assert "already has an active credential for sandbox" in body(response)
    assert canary not in body(response)
    assert ClientCredential.objects.count() == 1


def test_tenant_inline_adds_other_environment(admin_client_for, superuser, credential, canary):
    data = existing_and_new_rows(credential, new_inline_row(canary, "live"))
    response = admin_client_for(superuser).post(
        url(f"{TENANT}_change", credential.tenant_id), data, follow=True
    )
    assert response.status_code == 200
    assert canary not in body(response)
    assert sorted(credential.tenant.getpaid_credentials.values_list("environment", flat=True)) == [
        "live",
        "sandbox",
    ]
    credential.refresh_from_db()
    assert credential.client_secret == canary  # the read-only row was left alone


def test_tenant_inline_two_new_active_rows_for_one_environment(admin_client_for, superuser, canary):
    row = {
        "environment": "sandbox",
        "new_client_secret": canary,
        "is_active": "on",
        "other_scopes": "",
    }
    data = inline_data(
        {"name": "Dup", "slug": "dup"},
        [{**row, "new_client_id": "dup-client-1"}, {**row, "new_client_id": "dup-client-2"}],
    )
    response = admin_client_for(superuser).post(url(f"{TENANT}_add"), data)
    assert response.status_code == 200
    assert "already has an active credential" in body(response)
    assert not Tenant.objects.filter(slug="dup").exists()


def test_tenant_admin_registered_only_for_builtin_model():
    from django.contrib import admin

    assert not Tenant._meta.swapped
    assert admin.site.is_registered(Tenant)
    assert isinstance(admin.site._registry[ClientCredential], gp_admin.ClientCredentialAdmin)


def test_tenant_changelist_search(admin_client_for, superuser):
    make_tenant("alpha", "Alpha Inc")
    make_tenant("beta", "Beta Inc")
    response = admin_client_for(superuser).get(url(f"{TENANT}_changelist"), {"q": "alpha"})
    assert [t.slug for t in response.context["cl"].result_list] == ["alpha"]


def test_test_connection_runs_rows_concurrently(admin_client_for, superuser, fake_getpaid_settings):
    import time

    fake = fake_getpaid_settings
    fake.token_latency = 0.3
    rows = []
    for i in range(8):
        row = make_credential(client_id=f"conc-client-{i}", client_secret=f"conc-secret-{i}")
        fake.register_client(row.client_id, f"conc-secret-{i}")
        rows.append(row)
    started = time.monotonic()
    response = run_action(admin_client_for(superuser), "test_connection", *rows)
    elapsed = time.monotonic() - started
    assert [lvl for lvl, _ in messages_of(response)] == ["success"] * 8
    assert fake.token_request_count() == 8
    assert elapsed < 8 * 0.3 / 2  # one at a time would take 2.4 s


def test_test_connection_refuses_too_many_rows(
    admin_client_for, superuser, fake_getpaid_settings, monkeypatch
):
    from django_getpaid_auth import admin as gpa_admin

    monkeypatch.setattr(gpa_admin, "MAX_TESTED_ROWS", 2)
    rows = [make_credential(client_id=f"many-{i}") for i in range(3)]
    response = run_action(admin_client_for(superuser), "test_connection", *rows)
    assert [lvl for lvl, _ in messages_of(response)] == ["warning"]
    assert "getpaid_check" in messages_of(response)[0][1]
    assert fake_getpaid_settings.token_request_count() == 0


@pytest.mark.parametrize(
    ("token_entry", "failure_entry"),
    [
        ({"ct": "é", "exp": "soon", "refresh": None, "until": 1e300}, "junk"),
        ({"ct": "x", "exp": float("nan"), "refresh": 1, "until": 1}, {"until": "later"}),
        ([1, 2], {"until": 1.7e9 + 10**9, "error": {"class": 5}}),
    ],
)
def test_list_and_change_page_survive_garbage_in_the_cache(
    admin_client_for, superuser, credential, token_entry, failure_entry
):
    """Anyone who can write to the cache must not be able to break the admin."""
    snapshot = credentials.snapshot_of(credential, None)
    cache_backend.set(token_store.token_key(snapshot), token_entry, timeout=60)
    cache_backend.set(token_store.failure_key(snapshot), failure_entry, timeout=60)
    client = admin_client_for(superuser)
    listing = client.get(changelist_url())
    assert listing.status_code == 200 and "no token" in body(listing)
    assert client.get(change_url(credential)).status_code == 200
