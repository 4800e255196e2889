"""Every system check fires on its bad configuration and stays quiet on a good one."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from tests.factories import make_credential
from tests.settings import TEST_KEY_A


def ids(**kwargs) -> set[str]:
    return {m.id for m in run_checks(**kwargs) if m.id.startswith("django_getpaid_auth")}


def patch(settings, **values) -> None:
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, **values}


def test_good_configuration_is_quiet(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://x",
        }
    }
    assert ids() == set()


def test_no_key_is_an_error_and_fails_manage_py_check(settings):
    patch(settings, ENCRYPTION_KEYS=[])
    assert "django_getpaid_auth.E001" in ids()
    with pytest.raises(SystemCheckError, match="E001"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_no_key_is_an_error_in_debug_too(settings):
    settings.DEBUG = True
    patch(settings, ENCRYPTION_KEYS=[])
    assert "django_getpaid_auth.E001" in ids()


@pytest.mark.parametrize("bad", ["not-a-key", "", "A" * 44])
def test_malformed_key_is_an_error_naming_its_position(settings, bad):
    patch(settings, ENCRYPTION_KEYS=[TEST_KEY_A, bad])
    messages = [m for m in run_checks() if m.id == "django_getpaid_auth.E002"]
    assert len(messages) == 1
    assert "[1]" in messages[0].msg
    assert bad not in messages[0].msg or bad == ""


def test_unknown_environment_is_an_error(settings):
    patch(
        settings,
        ENVIRONMENTS={
            **settings.GETPAID_AUTH["ENVIRONMENTS"],
            "staging": {"AUDIENCE": "https://x", "API_URL": "https://x"},
        },
    )
    assert "django_getpaid_auth.E003" in ids()


def test_environment_without_url_is_an_error(settings):
    patch(
        settings, ENVIRONMENTS={"live": {"AUDIENCE": "https://api.getpaid.io", "API_URL": "nope"}}
    )
    assert "django_getpaid_auth.E003" in ids()


def test_bad_token_url_is_an_error(settings):
    patch(settings, TOKEN_URL="auth.getpaid.io/oauth/token")
    assert "django_getpaid_auth.E005" in ids()


def test_missing_cache_alias_is_an_error(settings):
    patch(settings, CACHE_ALIAS="tokens")
    assert "django_getpaid_auth.E004" in ids()
    with pytest.raises(SystemCheckError, match="E004"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


@pytest.mark.parametrize(
    "backend",
    [
        "django.core.cache.backends.locmem.LocMemCache",
        "django.core.cache.backends.dummy.DummyCache",
    ],
)
def test_process_local_cache_is_a_warning(settings, backend):
    settings.SILENCED_SYSTEM_CHECKS = []
    settings.CACHES = {"default": {"BACKEND": backend}}
    assert ids() == {"django_getpaid_auth.W001"}


def test_tenant_key_field_must_exist_and_be_unique(settings):
    patch(settings, TENANT_KEY_FIELD="nope")
    assert "django_getpaid_auth.E006" in ids()
    patch(settings, TENANT_KEY_FIELD="name")  # exists, not unique
    assert "django_getpaid_auth.E006" in ids()
    patch(settings, TENANT_KEY_FIELD="slug")
    assert "django_getpaid_auth.E006" not in ids()


@pytest.mark.django_db
def test_stored_malformed_scope_is_an_error_with_database_checks():
    credential = make_credential()
    type(credential).objects.filter(pk=credential.pk).update(scopes="payments:write")
    assert "django_getpaid_auth.E010" in ids(databases=["default"])
    assert "django_getpaid_auth.E010" not in ids()  # only with --database


@pytest.mark.django_db
def test_stored_unknown_scope_is_a_warning():
    make_credential(scopes="invoices:read_write")
    found = ids(databases=["default"])
    assert "django_getpaid_auth.W010" in found
    assert "django_getpaid_auth.E010" not in found


@pytest.mark.django_db
def test_stored_environment_not_configured_is_an_error(settings):
    make_credential(environment="live")
    assert "django_getpaid_auth.E011" not in ids(databases=["default"])
    patch(settings, ENVIRONMENTS={"sandbox": settings.GETPAID_AUTH["ENVIRONMENTS"]["sandbox"]})
    assert "django_getpaid_auth.E011" in ids(databases=["default"])


@pytest.mark.django_db
def test_good_stored_credentials_are_quiet():
    make_credential(scopes="payments:read accounts:read_write")
    assert ids(databases=["default"]) - {"django_getpaid_auth.W001"} == set()


def test_unknown_setting_name_is_a_warning_with_suggestion(settings):
    patch(settings, REFRESH_MARGN=30)
    messages = [m for m in run_checks() if m.id == "django_getpaid_auth.W002"]
    assert len(messages) == 1
    assert "REFRESH_MARGN" in messages[0].msg and "REFRESH_MARGIN" in messages[0].hint


@pytest.mark.parametrize(
    ("name", "value"), [("TOKEN_REQUEST_FORMAT", "xml"), ("CLIENT_AUTH_METHOD", "private_key_jwt")]
)
def test_bad_setting_value_is_an_error(settings, name, value):
    patch(settings, **{name: value})
    assert "django_getpaid_auth.E007" in ids()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WAIT_TIMEOUT", 0),
        ("WAIT_TIMEOUT", "30"),
        ("LEASE_TIMEOUT", float("inf")),
        ("CREDENTIAL_RECHECK_INTERVAL", -1),
        ("TOKEN_REQUEST_DEADLINE", float("nan")),
        ("MAX_TOKEN_RESPONSE_BYTES", 10),
        ("MAX_BACKGROUND_REFRESHES", 0),
        ("MAX_BACKGROUND_REFRESHES", 2.5),
        ("TOKEN_REQUEST_RETRIES", True),
        ("REFRESH_MARGIN_RATIO", 0.9),
        ("UNAUTHORIZED_REFETCH_PAUSE", -5),
        ("TOKEN_REQUEST_TIMEOUT", 5),
        ("API_TIMEOUT", (5, 0)),
    ],
)
def test_bad_number_is_an_error_naming_the_setting(settings, name, value):
    patch(settings, **{name: value})
    messages = [m for m in run_checks() if m.id == "django_getpaid_auth.E007"]
    assert len(messages) == 1 and name in messages[0].msg


def test_good_numbers_are_quiet(settings):
    patch(
        settings,
        WAIT_TIMEOUT=5,
        CREDENTIAL_RECHECK_INTERVAL=30.5,
        MAX_BACKGROUND_REFRESHES=8,
        TOKEN_REQUEST_TIMEOUT=[3, 10.5],
        UNAUTHORIZED_REFETCH_PAUSE=0,
    )
    assert "django_getpaid_auth.E007" not in ids()


@pytest.mark.parametrize(
    "entries",
    [["api.example.com:99999"], ["https://api.example.com"], ["api.example.com/v2"], "x.io"],
)
def test_malformed_allowed_api_host_is_an_error(settings, entries):
    patch(settings, ALLOWED_API_HOSTS=entries)
    messages = [m for m in run_checks() if m.id == "django_getpaid_auth.E007"]
    assert len(messages) == 1 and "ALLOWED_API_HOSTS" in messages[0].msg


def test_good_allowed_api_hosts_are_quiet(settings):
    patch(settings, ALLOWED_API_HOSTS=["proxy.example.com", "API.example.com:8443"])
    assert "django_getpaid_auth.E007" not in ids()


def test_api_url_with_an_invalid_port_is_an_error(settings):
    patch(settings, ENVIRONMENTS={"sandbox": {"API_URL": "https://api.example.com:70000"}})
    assert "django_getpaid_auth.E003" in ids()


@pytest.mark.parametrize("path", ["tests.no_such_module.resolver", "tests.settings.SECRET_KEY"])
def test_bad_tenant_resolver_is_an_error(settings, path):
    patch(settings, TENANT_RESOLVER=path)
    messages = [m for m in run_checks() if m.id == "django_getpaid_auth.E007"]
    assert len(messages) == 1 and "TENANT_RESOLVER" in messages[0].msg


def test_shipped_django_tenants_resolver_passes_the_check(settings):
    patch(settings, TENANT_RESOLVER="django_getpaid_auth.tenants.django_tenants_tenant")
    assert "django_getpaid_auth.E007" not in ids()
