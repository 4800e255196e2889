"""Encrypted credentials: storage, rotation, wrong keys, validation, constraint, no leaks."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction

from django_getpaid_auth.exceptions import (
    CredentialDecryptionError,
    EncryptedFieldLookupError,
    GetpaidAuthError,
    MissingEncryptionKeyError,
)
from django_getpaid_auth.models import ClientCredential, mask
from tests.factories import make_credential, make_tenant
from tests.settings import TEST_KEY_A, TEST_KEY_B

pytestmark = pytest.mark.django_db


def raw_secret(pk: int) -> str:
    table = ClientCredential._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT client_secret FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def keys(settings, *values: str) -> None:
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": list(values)}


def test_database_column_never_holds_the_plaintext(canary):
    credential = make_credential(client_secret=canary)
    stored = raw_secret(credential.pk)
    assert canary not in stored
    assert stored.startswith("gAAAAA")  # a Fernet token
    assert ClientCredential.objects.get(pk=credential.pk).client_secret == canary


def test_saving_other_fields_keeps_ciphertext_and_version(canary):
    credential = make_credential(client_secret=canary)
    loaded = ClientCredential.objects.get(pk=credential.pk)
    before = (raw_secret(credential.pk), loaded.secret_version)
    loaded.scopes = "payments:read accounts:read"
    loaded.save()
    assert (raw_secret(credential.pk), loaded.secret_version) == before


def test_setting_the_same_secret_again_keeps_the_version(canary):
    credential = make_credential(client_secret=canary)
    loaded = ClientCredential.objects.get(pk=credential.pk)
    version = loaded.secret_version
    loaded.client_secret = canary
    loaded.save()
    assert loaded.secret_version == version
    loaded.client_secret = canary + "-new"
    loaded.save()
    assert loaded.secret_version != version
    assert loaded.secret_changed_at is not None


def test_rotation_old_key_then_rotate_then_new_key_alone(settings, canary):
    keys(settings, TEST_KEY_A)
    credential = make_credential(client_secret=canary)
    written_with_a = raw_secret(credential.pk)

    keys(settings, TEST_KEY_B, TEST_KEY_A)
    assert ClientCredential.objects.get(pk=credential.pk).client_secret == canary

    out = StringIO()
    call_command("getpaid_rotate_keys", stdout=out)
    assert "1 credential secret(s) re-encrypted" in out.getvalue()
    assert raw_secret(credential.pk) != written_with_a
    assert canary not in out.getvalue()

    keys(settings, TEST_KEY_B)
    assert ClientCredential.objects.get(pk=credential.pk).client_secret == canary


def test_rotation_dry_run_changes_nothing(settings):
    credential = make_credential()
    before = raw_secret(credential.pk)
    keys(settings, TEST_KEY_B, TEST_KEY_A)
    out = StringIO()
    call_command("getpaid_rotate_keys", "--dry-run", stdout=out)
    assert "1 credential secret(s) would be re-encrypted" in out.getvalue()
    assert raw_secret(credential.pk) == before


def test_rotation_refuses_when_a_row_cannot_be_decrypted(settings):
    good = make_credential()
    keys(settings, TEST_KEY_B)
    bad = make_credential()  # written with B only
    keys(settings, TEST_KEY_A)  # B is gone: `bad` cannot be read
    before = raw_secret(good.pk)
    with pytest.raises(CommandError, match=f"pk={bad.pk}") as excinfo:
        call_command("getpaid_rotate_keys", stdout=StringIO())
    assert excinfo.value.returncode == 1
    assert raw_secret(good.pk) == before  # rolled back


def test_wrong_key_raises_clear_error_and_row_still_loads(settings, canary):
    credential = make_credential(client_secret=canary)
    keys(settings, TEST_KEY_B)
    loaded = ClientCredential.objects.get(pk=credential.pk)  # loading does not decrypt
    assert loaded.client_id == credential.client_id
    with pytest.raises(CredentialDecryptionError) as excinfo:
        loaded.client_secret  # noqa: B018
    message = str(excinfo.value)
    assert f"pk={credential.pk}" in message
    assert "ENCRYPTION_KEYS" in message
    assert raw_secret(credential.pk) not in message
    assert isinstance(excinfo.value, GetpaidAuthError)
    # other fields can still be changed without losing the stored secret
    loaded.is_active = False
    loaded.save()
    keys(settings, TEST_KEY_A)
    assert ClientCredential.objects.get(pk=credential.pk).client_secret == canary


def test_no_key_configured_is_a_clear_configuration_error(settings):
    keys(settings)
    with pytest.raises(MissingEncryptionKeyError, match="ENCRYPTION_KEYS"):
        make_credential()


@pytest.mark.parametrize(
    "lookup", ["client_secret", "client_secret__contains", "client_secret__iexact"]
)
def test_lookups_on_the_encrypted_field_are_refused(lookup):
    make_credential()
    with pytest.raises(EncryptedFieldLookupError):
        list(ClientCredential.objects.filter(**{lookup: "x"}))


def test_isnull_lookup_is_allowed():
    make_credential()
    assert ClientCredential.objects.filter(client_secret__isnull=False).count() == 1


def test_one_active_credential_per_tenant_and_environment():
    tenant = make_tenant()
    make_credential(tenant, environment="sandbox")
    make_credential(tenant, environment="live")  # other environment: fine
    make_credential(tenant, environment="sandbox", is_active=False)  # inactive: fine
    with pytest.raises(IntegrityError), transaction.atomic():
        make_credential(tenant, environment="sandbox", client_id="other")


def test_constraint_reported_by_validation():
    tenant = make_tenant()
    make_credential(tenant)
    duplicate = ClientCredential(
        tenant=tenant, environment="sandbox", client_id="x", client_secret="y", scopes=""
    )
    with pytest.raises(ValidationError, match="already has an active credential"):
        duplicate.full_clean()


@pytest.mark.parametrize(
    ("scopes", "valid"),
    [
        ("payments:read", True),
        ("payments:read_write accounts:read", True),
        ("invoices:read_write", True),  # unknown but well-formed
        ("payments:write", False),
        ("payments", False),
        ("Payments:read", False),
        ("payments:read extra", False),
    ],
)
def test_scopes_are_validated(scopes, valid):
    credential = ClientCredential(
        tenant=make_tenant(), environment="sandbox", client_id="c", client_secret="s", scopes=scopes
    )
    if valid:
        credential.full_clean()
    else:
        with pytest.raises(ValidationError, match="Malformed getpaid scope"):
            credential.full_clean()


def test_str_and_repr_never_show_the_secret(canary):
    credential = make_credential(client_secret=canary, client_id="client-abcdefghijkl")
    loaded = ClientCredential.objects.get(pk=credential.pk)
    for text in (str(credential), repr(credential), str(loaded), repr(loaded)):
        assert canary not in text
        assert "client-abcdefghijkl" not in text  # client id is masked too
    assert mask("client-abcdefghijkl") in repr(loaded)


def test_dumpdata_exports_ciphertext_and_loaddata_round_trips(canary, tmp_path):
    credential = make_credential(client_secret=canary)
    out = StringIO()
    call_command("dumpdata", "django_getpaid_auth.clientcredential", stdout=out)
    assert canary not in out.getvalue()
    fixture = tmp_path / "creds.json"
    fixture.write_text(out.getvalue())
    ClientCredential.objects.all().delete()
    call_command("loaddata", str(fixture), stdout=StringIO())
    assert ClientCredential.objects.get(pk=credential.pk).client_secret == canary


def test_tenant_exposes_its_credentials():
    tenant = make_tenant()
    credential = make_credential(tenant)
    assert list(tenant.getpaid_credentials.all()) == [credential]


def test_refresh_from_db_of_undecryptable_row_does_not_raise(settings, canary):
    credential = make_credential(client_secret=canary)
    keys(settings, TEST_KEY_B)
    credential.refresh_from_db()
    assert credential.client_id.startswith("client-")
    with pytest.raises(CredentialDecryptionError):
        credential.client_secret  # noqa: B018
    keys(settings, TEST_KEY_A)
    credential.refresh_from_db()
    assert credential.client_secret == canary


@pytest.mark.django_db(transaction=True)
def test_database_checks_before_migrate_do_not_crash():
    from django.core.checks import run_checks

    call_command("migrate", "django_getpaid_auth", "zero", verbosity=0)
    try:
        ids = {m.id for m in run_checks(databases=["default"])}
        assert "django_getpaid_auth.E010" not in ids
    finally:
        call_command("migrate", "django_getpaid_auth", verbosity=0)


# --- one active credential per tenant and environment: enforced by the database --------


def test_one_active_rule_is_a_unique_constraint_in_the_database_schema():
    """Not a conditional (partial) index, which Django skips on MariaDB/MySQL (W036)."""
    table = ClientCredential._meta.db_table
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    unique_columns = [c["columns"] for c in constraints.values() if c["unique"]]
    assert ["tenant_id", "active_environment"] in unique_columns


def test_active_environment_is_computed_by_the_database():
    tenant = make_tenant()
    active = make_credential(tenant, environment="live")
    inactive = make_credential(tenant, environment="live", is_active=False, client_id="old")
    rows = dict(ClientCredential.objects.values_list("pk", "active_environment"))
    assert rows == {active.pk: "live", inactive.pk: None}
    ClientCredential.objects.filter(pk=active.pk).update(is_active=False)
    ClientCredential.objects.filter(pk=inactive.pk).update(is_active=True)
    rows = dict(ClientCredential.objects.values_list("pk", "active_environment"))
    assert rows == {active.pk: None, inactive.pk: "live"}


def test_queryset_update_cannot_activate_a_second_credential():
    tenant = make_tenant()
    make_credential(tenant, environment="sandbox")
    spare = make_credential(tenant, environment="sandbox", is_active=False, client_id="spare")
    with pytest.raises(IntegrityError), transaction.atomic():
        ClientCredential.objects.filter(pk=spare.pk).update(is_active=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        ClientCredential.objects.bulk_create(
            [
                ClientCredential(
                    tenant=tenant, environment="sandbox", client_id="bulk", client_secret="s"
                )
            ]
        )
    assert ClientCredential.objects.filter(tenant=tenant, is_active=True).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_saves_cannot_both_activate():
    """Two open transactions each insert an active credential: only one can commit."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers; the race needs a server database")
    import threading

    tenant = make_tenant()
    first_inserted = threading.Event()
    second_done = threading.Event()

    def first() -> None:
        try:
            with transaction.atomic():
                make_credential(tenant, client_id="first")
                first_inserted.set()
                second_done.wait(1)  # meanwhile the second insert runs (and waits on us)
        finally:
            first_inserted.set()
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    first_inserted.wait(10)
    try:
        with pytest.raises(IntegrityError), transaction.atomic():
            make_credential(tenant, client_id="second")
    finally:
        second_done.set()
        thread.join(10)
    assert list(ClientCredential.objects.values_list("client_id", flat=True)) == ["first"]


def test_validation_allows_inactive_duplicates_and_other_environments():
    tenant = make_tenant()
    make_credential(tenant)
    for environment, is_active in (("sandbox", False), ("live", True)):
        ClientCredential(
            tenant=tenant,
            environment=environment,
            client_id="x",
            client_secret="y",
            scopes="",
            is_active=is_active,
        ).full_clean()


# --- malformed stored secrets (legacy plaintext, corruption): undecryptable, not a crash --

NON_ASCII_SECRET = "pässwort-legacy-plaintext"


def store_raw_secret(pk: int, value: str) -> None:
    """Write the column directly: the field would encrypt a str value."""
    table = ClientCredential._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET client_secret = %s WHERE id = %s", [value, pk])


@pytest.mark.parametrize(
    "token", ["gAAAAAé-not-ascii", NON_ASCII_SECRET, "not a token", "", b"gAAAAA", None, 42]
)
def test_decrypt_and_rotate_raise_invalid_token_for_any_malformed_value(token):
    from django_getpaid_auth import crypto

    with pytest.raises(crypto.InvalidToken):
        crypto.decrypt(token)
    with pytest.raises(crypto.InvalidToken):
        crypto.rotate(token)


def test_non_ascii_stored_secret_reads_as_undecryptable():
    import responses

    from django_getpaid_auth import get_token

    credential = make_credential()
    store_raw_secret(credential.pk, NON_ASCII_SECRET)
    loaded = ClientCredential.objects.get(pk=credential.pk)
    with pytest.raises(CredentialDecryptionError, match=f"pk={credential.pk}"):
        loaded.client_secret  # noqa: B018
    loaded.refresh_from_db()
    with responses.RequestsMock() as no_network:  # decrypts before any request is made
        with pytest.raises(CredentialDecryptionError, match=f"pk={credential.pk}") as excinfo:
            get_token(credential.tenant, "sandbox")
        assert not no_network.calls
    assert NON_ASCII_SECRET not in str(excinfo.value)


def test_non_ascii_stored_secret_can_be_replaced(canary):
    credential = make_credential()
    store_raw_secret(credential.pk, NON_ASCII_SECRET)
    loaded = ClientCredential.objects.get(pk=credential.pk)
    loaded.is_active = False  # other fields save, the stored value is left as it is
    loaded.save()
    assert raw_secret(credential.pk) == NON_ASCII_SECRET
    loaded.client_secret = canary
    loaded.save()
    assert raw_secret(credential.pk).startswith("gAAAAA")
    assert ClientCredential.objects.get(pk=credential.pk).client_secret == canary


def test_field_to_python_keeps_a_non_ascii_value_as_plaintext():
    field = ClientCredential._meta.get_field("client_secret")
    value = field.to_python(NON_ASCII_SECRET)
    assert value == NON_ASCII_SECRET
    assert type(value) is str  # not taken for stored ciphertext: it will be encrypted


def test_rotation_reports_a_non_ascii_row_as_undecryptable(settings):
    good = make_credential()
    bad = make_credential()
    store_raw_secret(bad.pk, NON_ASCII_SECRET)
    keys(settings, TEST_KEY_B, TEST_KEY_A)
    before = raw_secret(good.pk)
    for options in ((), ("--dry-run",)):
        with pytest.raises(CommandError, match=f"pk={bad.pk}") as excinfo:
            call_command("getpaid_rotate_keys", *options, stdout=StringIO())
        assert excinfo.value.returncode == 1
        assert NON_ASCII_SECRET not in str(excinfo.value)
    assert raw_secret(good.pk) == before  # all or nothing: rolled back
    store_raw_secret(bad.pk, ClientCredential.objects.get(pk=good.pk).__dict__["client_secret"])
    call_command("getpaid_rotate_keys", stdout=StringIO())
    assert raw_secret(good.pk) != before


@pytest.mark.django_db
def test_refresh_from_db_with_a_generator_of_fields_reloads_them():
    credential = make_credential(client_id="before-reload")
    ClientCredential.objects.filter(pk=credential.pk).update(client_id="after-reload")
    credential.refresh_from_db(fields=(name for name in ["client_id"]))
    assert credential.client_id == "after-reload"
