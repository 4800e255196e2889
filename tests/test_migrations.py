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
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "FK testapp.Organization" in result.stdout
    assert "REL 1" in result.stdout
    assert "BUILTIN TABLE False" in result.stdout
