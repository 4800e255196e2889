"""Migrations: complete, reversible, and usable with and without a swapped tenant model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_no_missing_migrations():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_migrate_to_zero_and_back():
    from django.db import connection

    call_command("migrate", "django_getpaid_auth", "zero", verbosity=0)
    assert "django_getpaid_auth_clientcredential" not in connection.introspection.table_names()
    call_command("migrate", "django_getpaid_auth", verbosity=0)
    assert "django_getpaid_auth_clientcredential" in connection.introspection.table_names()


def run_project(tmp_path: Path, extra_settings: str, script: str) -> subprocess.CompletedProcess:
    """Run a fresh Django process with a throwaway SQLite database."""
    settings_file = tmp_path / "mig_settings.py"
    settings_file.write_text(
        "from tests.settings import *  # noqa\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', 'NAME': {str(tmp_path / 'db.sqlite3')!r}}}}}\n"
        + textwrap.dedent(extra_settings)
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mig_settings",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
    }
    env.pop("DATABASE_URL", None)
    code = "import django; django.setup()\n" + textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_project_without_tenant_setting_uses_built_in_tenant(tmp_path):
    result = run_project(
        tmp_path,
        "",
        """
        from django.core.management import call_command
        call_command("migrate", verbosity=0)
        from django_getpaid_auth.models import Tenant, ClientCredential
        t = Tenant.objects.create(slug="acme", name="Acme")
        c = ClientCredential.objects.create(tenant=t, client_id="id", client_secret="s")
        print("FK", ClientCredential._meta.get_field("tenant").related_model._meta.label)
        print("REL", t.getpaid_credentials.count())
        call_command("migrate", "django_getpaid_auth", "zero", verbosity=0)
        print("ZERO OK")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "FK django_getpaid_auth.Tenant" in result.stdout
    assert "REL 1" in result.stdout
    assert "ZERO OK" in result.stdout


def test_project_with_its_own_tenant_model(tmp_path):
    result = run_project(
        tmp_path,
        """
        GETPAID_AUTH_TENANT_MODEL = "testapp.Organization"
        GETPAID_AUTH = {**GETPAID_AUTH, "TENANT_KEY_FIELD": "code"}
        """,
        """
        from django.core.management import call_command
        from django.db import connection
        call_command("migrate", verbosity=0)
        call_command("check", verbosity=0)
        from tests.testapp.models import Organization
        from django_getpaid_auth.models import ClientCredential
        org = Organization.objects.create(code="org-1", title="Org One")
        ClientCredential.objects.create(tenant=org, client_id="id", client_secret="s")
        print("FK", ClientCredential._meta.get_field("tenant").related_model._meta.label)
        print("REL", org.getpaid_credentials.count())
        print("BUILTIN TABLE", "django_getpaid_auth_tenant" in connection.introspection.table_names())
        print("ACTIVE", list(ClientCredential.objects.values_list("active_environment", flat=True)))
        from django.db import IntegrityError
        try:
            ClientCredential.objects.create(tenant=org, client_id="id2", client_secret="s")
        except IntegrityError:
            print("SECOND ACTIVE REFUSED")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "FK testapp.Organization" in result.stdout
    assert "REL 1" in result.stdout
    assert "BUILTIN TABLE False" in result.stdout
    assert "ACTIVE ['sandbox']" in result.stdout
    assert "SECOND ACTIVE REFUSED" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_0002_keeps_existing_rows_and_explains_duplicate_active_credentials():
    """The upgrade on the suite's database (SQLite, PostgreSQL or MariaDB).

    Duplicate active rows can exist where 0001's conditional constraint was never
    created (MariaDB/MySQL); elsewhere it is dropped first to reproduce that database.
    """
    from django.core.management.base import CommandError
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from django_getpaid_auth.models import ClientCredential

    call_command("migrate", "django_getpaid_auth", "0001", verbosity=0)
    try:
        state = MigrationExecutor(connection).loader.project_state(
            ("django_getpaid_auth", "0001_initial")
        )
        OldTenant = state.apps.get_model("django_getpaid_auth", "Tenant")
        OldCredential = state.apps.get_model("django_getpaid_auth", "ClientCredential")
        [old_constraint] = OldCredential._meta.constraints
        with connection.schema_editor() as editor:
            editor.remove_constraint(OldCredential, old_constraint)
        tenant = OldTenant.objects.create(slug="dup", name="Dup")
        rows = {
            name: OldCredential.objects.create(
                tenant=tenant,
                environment=environment,
                client_id=name,
                client_secret="s",
                is_active=active,
            ).pk
            for name, environment, active in (
                ("a", "sandbox", True),
                ("b", "sandbox", True),
                ("c", "live", True),
                ("d", "sandbox", False),
            )
        }

        with pytest.raises(CommandError) as excinfo:
            call_command("migrate", "django_getpaid_auth", verbosity=0)
        message = str(excinfo.value)
        assert (
            f"tenant_id={tenant.pk} environment=sandbox: active credentials "
            f"pk={rows['a']}, {rows['b']}" in message
        )
        assert "environment=live" not in message
        assert "Deactivate all but one" in message
        assert "Nothing was changed" in message

        OldCredential.objects.filter(pk=rows["b"]).update(is_active=False)
        with connection.schema_editor() as editor:  # back as 0001 left it (0002 drops it)
            editor.add_constraint(OldCredential, old_constraint)
        call_command("migrate", "django_getpaid_auth", verbosity=0)
        computed = dict(ClientCredential.objects.values_list("client_id", "active_environment"))
        assert computed == {"a": "sandbox", "b": None, "c": "live", "d": None}
    finally:
        call_command("migrate", "django_getpaid_auth", verbosity=0)
