"""Small public behaviours not pinned down elsewhere: key helpers, settings conversion
errors, system checks on malformed settings, field guards, tenant references, sessions'
URL handling, and the API probe of an unreachable API.
"""

from __future__ import annotations

import io
import json

import pytest
import requests
import responses
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError

from django_getpaid_auth import checks, crypto, get_session, get_token, receivers, service
from django_getpaid_auth.conf import getpaid_settings
from django_getpaid_auth.exceptions import (
    EncryptedFieldLookupError,
    ForeignHostError,
    GetpaidAuthConfigurationError,
    UnknownEnvironmentError,
)
from django_getpaid_auth.fields import Ciphertext, EncryptedDescriptor, EncryptedTextField
from django_getpaid_auth.models import ClientCredential
from django_getpaid_auth.scopes import split_scopes
from django_getpaid_auth.testing import TokenEndpoint
from django_getpaid_auth.tokens import jwt_claims
from tests.factories import make_credential, make_tenant
from tests.settings import TEST_KEY_A

API = "https://api.sandbox.getpaid.test"


# --- keys ---------------------------------------------------------------------------------


def test_generated_keys_are_new_and_usable(settings):
    first, second = crypto.generate_key(), crypto.generate_key()
    assert first != second
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": [first]}
    assert crypto.decrypt(crypto.encrypt("secret")) == "secret"
    assert Fernet(first.encode()).decrypt(crypto.encrypt("x").encode()) == b"x"


@pytest.mark.parametrize("key", [TEST_KEY_A, TEST_KEY_A.encode()])
def test_a_single_key_instead_of_a_list_is_accepted(settings, key):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": key}
    assert crypto.configured_keys() == [TEST_KEY_A]
    token = crypto.encrypt("secret")
    assert Fernet(TEST_KEY_A.encode()).decrypt(token.encode()) == b"secret"


def test_a_payload_that_is_not_utf8_does_not_decrypt():
    token = crypto.get_fernet().encrypt(b"\xff\xfe not utf-8").decode()
    with pytest.raises(crypto.InvalidToken):
        crypto.decrypt(token)


# --- settings --------------------------------------------------------------------------------


def test_a_setting_that_cannot_be_converted_names_itself(settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "WAIT_TIMEOUT": "soon"}
    with pytest.raises(GetpaidAuthConfigurationError, match=r"\['WAIT_TIMEOUT'\] is 'soon'.*float"):
        getpaid_settings.typed  # noqa: B018
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "WAIT_TIMEOUT": 5, "TOKEN_REQUEST_TIMEOUT": 3}
    with pytest.raises(GetpaidAuthConfigurationError, match=r"\(connect, read\) pair"):
        getpaid_settings.typed  # noqa: B018


def test_an_unknown_setting_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="Unknown GETPAID_AUTH setting: 'TOKEN_ULR'"):
        getpaid_settings.TOKEN_ULR  # noqa: B018
    assert not hasattr(getpaid_settings, "NOPE")


# --- system checks ---------------------------------------------------------------------------


def ids(messages) -> list[str]:
    return [m.id for m in messages]


@pytest.mark.parametrize("value", [["https://auth.example"], {"url": "https://x"}, 42, None])
def test_a_token_url_that_is_not_text_is_an_error(settings, value):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TOKEN_URL": value}
    messages = checks.check_environments()
    assert any("TOKEN_URL" in m.msg for m in messages)


@pytest.mark.parametrize("value", [[], {}, "live"])
def test_environments_must_be_a_non_empty_dict(settings, value):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENVIRONMENTS": value}
    assert ids(checks.check_environments()) == ["django_getpaid_auth.E003"]


def test_setting_names_check_without_the_setting_or_with_a_non_dict(settings):
    del settings.GETPAID_AUTH
    assert checks.check_setting_names_and_choices() == []
    settings.GETPAID_AUTH = ["ENCRYPTION_KEYS"]
    assert ids(checks.check_setting_names_and_choices()) == ["django_getpaid_auth.E007"]


@pytest.mark.parametrize("label", ["nope.Tenant", "not-a-label"])
def test_a_misconfigured_tenant_model_is_reported_not_raised(settings, label):
    settings.GETPAID_AUTH_TENANT_MODEL = label
    assert ids(checks.check_tenant_key_field()) == ["django_getpaid_auth.E006"]
    receivers.connect()  # at startup: must not raise either (the check reports it)


# --- fields ----------------------------------------------------------------------------------


def test_ciphertext_repr_never_shows_the_value():
    assert repr(Ciphertext("gAAAA-secret-ish")) == "<Ciphertext>"
    assert "secret-ish" not in repr([Ciphertext("gAAAA-secret-ish")])


def test_the_field_descriptor_on_the_class_is_the_descriptor():
    assert isinstance(ClientCredential.client_secret, EncryptedDescriptor)
    assert ClientCredential.client_secret.field.name == "client_secret"


@pytest.mark.parametrize("option", [{"unique": True}, {"db_index": True}, {"primary_key": True}])
def test_encrypted_field_refuses_index_options(option):
    field = EncryptedTextField(**option)
    field.set_attributes_from_name("secret")
    field.model = ClientCredential
    assert "django_getpaid_auth.E100" in ids(field.check())


def test_encrypted_field_has_no_transforms():
    with pytest.raises(EncryptedFieldLookupError, match="Transform 'lower'"):
        ClientCredential.objects.filter(client_secret__lower__exact="x")


@pytest.mark.django_db
def test_encrypted_field_conversions_of_none_and_ciphertext():
    field = ClientCredential._meta.get_field("client_secret")
    stored = Ciphertext(crypto.encrypt("s"))
    assert field.to_python(None) is None
    assert field.to_python(stored) is stored
    assert field.get_db_prep_save(None, connection=None) is None
    credential = ClientCredential.objects.get(pk=make_credential(client_secret="plain-secret").pk)
    unsaved = ClientCredential(client_id="x", client_secret="typed-in")
    assert field.value_from_object(ClientCredential(client_id="x", client_secret=None)) is None
    for obj, plain in ((credential, "plain-secret"), (unsaved, "typed-in")):
        value = field.value_from_object(obj)  # what dumpdata serialises
        assert isinstance(value, Ciphertext) and plain not in value
        assert crypto.decrypt(value) == plain


# --- scopes and tokens -----------------------------------------------------------------------


def test_split_scopes_of_nothing_and_of_blank_items():
    assert split_scopes(None) == []
    assert split_scopes(["a", " ", "", "b ", "a"]) == ["a", "b"]


@pytest.mark.parametrize("value", [None, 42, b"a.b.c", "x" * 20_000])
def test_jwt_claims_of_non_tokens_is_none(value):
    assert jwt_claims(value) is None


# --- tenants and sessions --------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("ref", [42, 4.2, object()])
def test_a_tenant_reference_of_the_wrong_type_is_a_type_error(ref):
    with pytest.raises(TypeError, match="tenant instance or its slug string"):
        get_token(ref)


@pytest.mark.django_db
def test_an_unknown_environment_is_a_configuration_error():
    tenant = make_tenant()
    make_credential(tenant)
    with pytest.raises(UnknownEnvironmentError, match="'staging'; configured: live, sandbox"):
        get_token(tenant, "staging")


@pytest.fixture
def session_env():
    tenant = make_tenant()
    make_credential(tenant)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        endpoint = TokenEndpoint(rsps)
        rsps.add(responses.GET, f"{API}/v2/ping", json={"status": "ok"})
        yield tenant, endpoint, rsps


@pytest.mark.django_db
def test_session_repr_bytes_urls_and_bad_ports(session_env):
    tenant, endpoint, _ = session_env
    session = get_session(tenant)
    assert repr(session.auth) == f"<GetpaidBearerAuth tenant={tenant!r} environment=None>"
    assert session.get(b"/v2/ping").json() == {"status": "ok"}
    assert session.get(f"{API}/v2/ping".encode()).json() == {"status": "ok"}
    with pytest.raises(ForeignHostError):
        session.get("https://api.sandbox.getpaid.test:8443/v2/ping")
    assert endpoint.count == 1


@pytest.mark.django_db
def test_closing_a_session_leaves_the_shared_pool_to_others(session_env):
    tenant, _, _ = session_env
    first = get_session(tenant)
    first.close()
    assert first.adapters == {}
    with pytest.raises(requests.exceptions.InvalidSchema):
        first.get("/v2/ping")
    assert get_session(tenant).get("/v2/ping").json() == {"status": "ok"}


@pytest.mark.django_db
def test_waiting_for_background_refreshes_with_none_running_returns():
    service.wait_for_background_refreshes(timeout=0.5)


# --- the API probe ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_probe_of_an_unreachable_api_is_reported():
    tenant = make_tenant("probe")
    make_credential(tenant)
    out = io.StringIO()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        TokenEndpoint(rsps)  # the API URL is not registered: the connection is refused
        with pytest.raises(CommandError) as excinfo:
            call_command("getpaid_check", "--json", "--probe-api", stdout=out)
    assert excinfo.value.returncode == 1  # a check failed
    result = json.loads(out.getvalue())["results"][0]
    assert result["ok"] is False
    assert result["error"] == "API probe failed: ConnectionError"
    assert result["error_type"] == "ApiUnreachable"
    assert result["expires_at"] is not None  # the token itself was fine
