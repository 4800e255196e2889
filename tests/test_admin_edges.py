"""Admin displays and actions on the rows the main admin tests do not have: long-lived and
refresh-due tokens, empty scopes, checked rows, rows with no key configured or an unknown
environment, and the helpers that keep secrets out of error reports and history.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import responses
from django.contrib import admin as django_admin
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from django_getpaid_auth import admin as gp_admin
from django_getpaid_auth import get_token
from django_getpaid_auth.models import ClientCredential, Tenant
from django_getpaid_auth.testing import TokenEndpoint
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

CRED = "django_getpaid_auth_clientcredential"


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", None)
    client.force_login(user)
    return client


def change_page(client, credential) -> str:
    response = client.get(reverse(f"admin:{CRED}_change", args=[credential.pk]))
    assert response.status_code == 200
    return response.content.decode()


def list_page(client) -> str:
    response = client.get(reverse(f"admin:{CRED}_changelist"))
    assert response.status_code == 200
    return response.content.decode()


def model_admin() -> gp_admin.ClientCredentialAdmin:
    return django_admin.site._registry[ClientCredential]


def test_a_token_valid_for_hours_shows_hours_then_refresh_due(admin_client, fake_clock):
    tenant = make_tenant()
    make_credential(tenant)
    with responses.RequestsMock() as rsps:
        TokenEndpoint(rsps, expires_in=3 * 3600)
        get_token(tenant)
    page = list_page(admin_client)
    assert "expires in 2:59:" in page or "expires in 3:00:00" in page
    assert "(refresh due)" not in page
    fake_clock.advance(3 * 3600 - 120)  # past the refresh point, still usable
    page = list_page(admin_client)
    assert "(refresh due)" in page
    assert gp_admin.ORANGE_BADGE in page


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00"),
        (59.9, "00:59"),
        (3599, "59:59"),
        (3600, "1:00:00"),
        (90061, "25:01:01"),
        (-5, "00:00"),
    ],
)
def test_format_remaining(seconds, text):
    assert gp_admin.format_remaining(seconds) == text


def test_token_column_outside_the_change_list_looks_the_state_up(fake_clock):
    tenant = make_tenant()
    credential = make_credential(tenant)
    assert "no token" in model_admin().token_status(credential)
    with responses.RequestsMock() as rsps:
        TokenEndpoint(rsps, expires_in=600)
        get_token(tenant)
    assert re.search(r"expires in (09:5\d|10:00)<", model_admin().token_status(credential))


def test_empty_scopes_show_none(admin_client):
    make_credential(scopes="")
    assert "<em>none</em>" in list_page(admin_client)


def test_change_page_shows_the_last_check_result(admin_client):
    credential = make_credential()
    assert "never checked" in change_page(admin_client, credential)
    checked = timezone.now() - timedelta(minutes=5)
    ClientCredential.objects.filter(pk=credential.pk).update(
        last_checked_at=checked, last_check_ok=True
    )
    assert "✔ passed" in change_page(admin_client, credential)
    ClientCredential.objects.filter(pk=credential.pk).update(
        last_check_ok=False, last_check_error="getpaid rejected the client credentials."
    )
    page = change_page(admin_client, credential)
    assert "✘ failed" in page and "getpaid rejected the client credentials." in page


def test_secret_without_a_change_time_is_still_shown_as_stored(admin_client):
    credential = make_credential()
    assert "last changed" in change_page(admin_client, credential)
    ClientCredential.objects.filter(pk=credential.pk).update(secret_changed_at=None)
    page = change_page(admin_client, credential)
    assert "stored (write-only)" in page and "last changed" not in page


def test_secret_problem_of_unsaved_and_keyless_rows(settings):
    credential = make_credential()
    stored = ClientCredential.objects.get(pk=credential.pk)
    assert gp_admin.secret_problem(stored) == ""
    assert gp_admin.secret_problem(ClientCredential(client_id="x", client_secret="typed")) == ""
    assert gp_admin.secret_problem(ClientCredential(client_id="x")) == "no secret stored"
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": []}
    problem = gp_admin.secret_problem(stored)
    assert "ENCRYPTION_KEYS" in problem and problem != "cannot decrypt: check ENCRYPTION_KEYS"


def test_keyless_rows_are_flagged_in_the_list(admin_client, settings):
    make_credential()
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": []}
    page = list_page(admin_client)
    assert gp_admin.RED_BADGE in page and "ENCRYPTION_KEYS" in page


def test_clear_cached_token_reports_rows_it_cannot_resolve(admin_client):
    good = make_credential()
    bad = make_credential()
    ClientCredential.objects.filter(pk=bad.pk).update(environment="staging")
    response = admin_client.post(
        reverse(f"admin:{CRED}_changelist"),
        {"action": "clear_cached_token", "_selected_action": [good.pk, bad.pk]},
        follow=True,
    )
    found = sorted((m.level_tag, str(m)) for m in response.context["messages"])
    assert [level for level, _ in found] == ["error", "success"]
    assert "staging" in found[0][1]
    assert found[1][1] == "Cleared the cached token of 1 credential."


def test_only_the_bad_row_fails_when_clearing_alone(admin_client):
    bad = make_credential()
    ClientCredential.objects.filter(pk=bad.pk).update(environment="staging")
    response = admin_client.post(
        reverse(f"admin:{CRED}_changelist"),
        {"action": "clear_cached_token", "_selected_action": [bad.pk]},
        follow=True,
    )
    assert [m.level_tag for m in response.context["messages"]] == ["error"]


def test_hide_secret_post_parameters_keeps_all_hidden():
    request = RequestFactory().post("/", {"new_client_secret": "s", "other": "x"})
    request.sensitive_post_parameters = "__ALL__"
    gp_admin.hide_secret_post_parameters(request)
    assert request.sensitive_post_parameters == "__ALL__"
    request = RequestFactory().post("/", {"cred-0-new_client_secret": "s", "other": "x"})
    request.sensitive_post_parameters = ["other"]
    gp_admin.hide_secret_post_parameters(request)
    assert request.sensitive_post_parameters == ["other", "cred-0-new_client_secret"]


def test_change_message_of_a_form_without_the_secret_field_is_unchanged():
    message = [{"changed": {"fields": ["Name", "new_client_secret"]}}]

    class NoSecretForm:
        fields = {"name": object()}

    assert gp_admin.secret_free_change_message(message, NoSecretForm()) == message
    assert message == [{"changed": {"fields": ["Name", "new_client_secret"]}}]


def test_tenant_autocomplete_only_when_the_tenant_admin_can_search(rf):
    site = django_admin.AdminSite(name="other")
    credential_admin = gp_admin.ClientCredentialAdmin(ClientCredential, site)
    request = rf.get("/")
    assert credential_admin.get_autocomplete_fields(request) == []  # tenant not registered
    site.register(Tenant, django_admin.ModelAdmin)  # no search_fields
    assert credential_admin.get_autocomplete_fields(request) == []
    assert model_admin().get_autocomplete_fields(request) == ["tenant"]


def test_tenant_edit_without_credential_rows_logs_the_change(admin_client):
    tenant = make_tenant("bare", "Bare Ltd")
    inline = gp_admin.ClientCredentialInline
    url = reverse("admin:django_getpaid_auth_tenant_change", args=[tenant.pk])
    prefix = "getpaid_credentials"
    data = {
        "name": "Bare Renamed",
        "slug": "bare",
        f"{prefix}-TOTAL_FORMS": "0",
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant.refresh_from_db()
    assert tenant.name == "Bare Renamed"
    from django.contrib.admin.models import LogEntry

    entry = LogEntry.objects.get(object_id=str(tenant.pk))
    assert "Name" in entry.get_change_message()
    assert inline.model is ClientCredential
