"""Django's error reports never carry a client secret or an encryption key.

A 500 while saving a credential in the admin is e-mailed to ADMINS (``DEBUG=False``): the
report lists the POST data and, in its HTML form, every frame's local variables. The
POSTed secret and the secret's plaintext in the saving frames must show as stars.

With ``DEBUG=True`` Django filters nothing (``SafeExceptionReporterFilter.is_active`` is
``DEBUG is False``), so there the valid encryption keys are kept out of every frame that
is on the stack when a malformed key list is reported.
"""

from __future__ import annotations

import logging
from typing import Any

import django
import pytest
from django.core import mail
from django.db.models.signals import post_save
from django.test import Client
from django.urls import reverse
from django.utils.log import AdminEmailHandler

from django_getpaid_auth.models import ClientCredential
from tests.factories import make_tenant
from tests.settings import TEST_KEY_A, TEST_KEY_B

pytestmark = pytest.mark.django_db

MALFORMED_KEY_LIST = [TEST_KEY_A, "not-a-fernet-key", TEST_KEY_B]


class SaveFailed(Exception):
    pass


@pytest.fixture
def admin_client(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("root", "root@example.com", None)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture
def reports(settings):
    """Error e-mails to ADMINS, as a production site sends them (text and HTML)."""
    settings.DEBUG = False
    # Django 6.0 takes addresses; (name, address) pairs are deprecated there.
    settings.ADMINS = (
        ["ops@example.com"] if django.VERSION >= (6, 0) else [("Ops", "ops@example.com")]
    )
    html_handler = AdminEmailHandler(include_html=True)  # many projects turn HTML on
    logger = logging.getLogger("django.request")
    logger.addHandler(html_handler)
    mail.outbox.clear()
    yield mail.outbox
    logger.removeHandler(html_handler)


@pytest.fixture
def saving_fails():
    """From now on a credential's save raises after the secret was set (a bug, a lost
    database): connected only in the test, nothing of the code under test is replaced."""

    def explode(sender: Any, instance: ClientCredential, **kwargs: Any) -> None:
        raise SaveFailed("database went away")

    def start() -> None:
        post_save.connect(explode, sender=ClientCredential, dispatch_uid="test-explode")

    yield start
    post_save.disconnect(sender=ClientCredential, dispatch_uid="test-explode")


def everything_sent(outbox: list) -> str:
    """Subject, body, HTML alternatives and attachments of every e-mail."""
    parts = []
    for message in outbox:
        parts += [message.subject, message.body]
        parts += [str(content) for content, _mimetype in getattr(message, "alternatives", [])]
        for attachment in message.attachments:
            parts.append(str(attachment[1] if isinstance(attachment, tuple) else attachment))
    return "\n".join(parts)


def credential_post(tenant: Any, secret: str) -> dict[str, Any]:
    return {
        "tenant": tenant.pk,
        "environment": "sandbox",
        "client_id": "report-client-id-0123",
        "new_client_secret": secret,
        "known_scopes": ["payments:read"],
        "other_scopes": "",
        "is_active": "on",
    }


def assert_reported_without(outbox: list, *secrets: str) -> str:
    assert len(outbox) == 2, "the text and the HTML report were both sent"
    assert all(m.to == ["ops@example.com"] for m in outbox)
    assert any(getattr(m, "alternatives", None) for m in outbox), "an HTML report was sent"
    sent = everything_sent(outbox)
    assert "new_client_secret" in sent  # the POST section is there, with the value hidden
    for secret in secrets:
        assert secret not in sent
    return sent


def test_credential_add_500_report_hides_the_secret(admin_client, reports, saving_fails, canary):
    saving_fails()
    response = admin_client.post(
        reverse("admin:django_getpaid_auth_clientcredential_add"),
        credential_post(make_tenant(), canary),
    )
    assert response.status_code == 500
    sent = assert_reported_without(reports, canary)
    assert "SaveFailed" in sent


def test_credential_change_500_report_hides_the_secret(admin_client, reports, saving_fails, canary):
    tenant = make_tenant()
    credential = ClientCredential.objects.create(
        tenant=tenant, environment="sandbox", client_id="old", client_secret="old-secret"
    )
    saving_fails()
    response = admin_client.post(
        reverse("admin:django_getpaid_auth_clientcredential_change", args=[credential.pk]),
        credential_post(tenant, canary),
    )
    assert response.status_code == 500
    assert "SaveFailed" in assert_reported_without(reports, canary)


def test_tenant_inline_500_report_hides_the_secret(admin_client, reports, saving_fails, canary):
    saving_fails()
    prefix = "getpaid_credentials"
    data = {
        "name": "Inline Ltd",
        "slug": "inline-ltd",
        f"{prefix}-TOTAL_FORMS": "1",
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
        f"{prefix}-0-environment": "live",
        f"{prefix}-0-new_client_id": "inline-client-id-42",
        f"{prefix}-0-new_client_secret": canary,
        f"{prefix}-0-is_active": "on",
        f"{prefix}-0-other_scopes": "",
    }
    response = admin_client.post(reverse("admin:django_getpaid_auth_tenant_add"), data)
    assert response.status_code == 500
    assert "SaveFailed" in assert_reported_without(reports, canary)


def test_malformed_key_list_500_report_hides_keys_and_secret(
    admin_client, reports, settings, canary
):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": MALFORMED_KEY_LIST}
    response = admin_client.post(
        reverse("admin:django_getpaid_auth_clientcredential_add"),
        credential_post(make_tenant(), canary),
    )
    assert response.status_code == 500
    sent = assert_reported_without(reports, canary, TEST_KEY_A, TEST_KEY_B)
    assert "InvalidEncryptionKeyError" in sent
    assert '["ENCRYPTION_KEYS"][1] is not a valid Fernet key' in sent


def test_malformed_key_list_debug_page_does_not_show_the_valid_keys(admin_client, settings, canary):
    settings.DEBUG = True
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": MALFORMED_KEY_LIST}
    response = admin_client.post(
        reverse("admin:django_getpaid_auth_clientcredential_add"),
        credential_post(make_tenant(), canary),
    )
    assert response.status_code == 500
    page = response.content.decode()
    assert "InvalidEncryptionKeyError" in page  # Django's technical 500 page, with locals
    assert "Local vars" in page
    assert TEST_KEY_A not in page
    assert TEST_KEY_B not in page
