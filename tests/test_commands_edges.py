"""Management commands' configuration and output edges: system check failures, bad
worker counts, astral control characters in --json, credentials without scopes, and key
rotation without a usable key.
"""

from __future__ import annotations

import io
import json
import re

import pytest
import responses
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError

from django_getpaid_auth.models import ClientCredential
from django_getpaid_auth.testing import TokenEndpoint
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db


def run(name: str, *args, **kwargs) -> tuple[str, int]:
    out = io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=io.StringIO(), **kwargs)
    except CommandError as exc:
        return out.getvalue() + str(exc), exc.returncode
    return out.getvalue(), 0


def test_system_check_errors_are_configuration_errors(settings):
    make_credential()
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": ["not-a-fernet-key"]}
    with pytest.raises(SystemCheckError) as excinfo:
        call_command("getpaid_check", skip_checks=False, stdout=io.StringIO())
    assert excinfo.value.returncode == 2
    assert "django_getpaid_auth.E" in str(excinfo.value)


def test_system_checks_that_pass_let_the_check_run():
    tenant = make_tenant()
    make_credential(tenant)
    with responses.RequestsMock() as rsps:
        endpoint = TokenEndpoint(rsps)
        output, code = run("getpaid_check", skip_checks=False)
    assert code == 0, output
    assert endpoint.count == 1


@pytest.mark.parametrize("workers", [-1, "4"])
def test_workers_must_be_a_positive_integer(workers):
    output, code = run("getpaid_check", workers=workers)
    assert code == 2
    assert "--workers must be at least 1" in output


def test_astral_control_characters_are_escaped_as_surrogate_pairs():
    tag = "\U000e0041"  # TAG LATIN CAPITAL LETTER A: invisible format character (Cf)
    emoji = "\U0001f600"  # printable: kept as it is
    tenant = make_tenant("astral", name=f"Evil{tag}Corp {emoji}")
    make_credential(tenant)
    with responses.RequestsMock() as rsps:
        TokenEndpoint(rsps)
        output, code = run("getpaid_check", "--json")
    assert code == 0
    assert "\\udb40\\udc41" in output and tag not in output
    assert emoji in output
    document = json.loads(output)
    assert document["results"][0]["tenant"] == f"Evil{tag}Corp {emoji}"


def test_a_credential_without_requested_scopes_lists_what_was_granted():
    tenant = make_tenant("noscope")
    make_credential(tenant, scopes="")
    with responses.RequestsMock() as rsps:
        TokenEndpoint(rsps, scope="payments:read accounts:read")
        output, code = run("getpaid_check")
    assert code == 0
    row = next(line for line in output.splitlines() if "noscope" in line)
    # SCOPES, then QUOTA ("-": the answer carried no quota headers), ERROR empty
    assert row.endswith("accounts:read payments:read  -")


def test_a_failed_credential_without_requested_scopes_shows_a_dash():
    tenant = make_tenant("noscope-failed")
    make_credential(tenant, scopes="")
    with responses.RequestsMock() as rsps:
        endpoint = TokenEndpoint(rsps)
        endpoint.answer = (401, {"Content-Type": "application/json"}, '{"error":"access_denied"}')
        output, code = run("getpaid_check")
    assert code == 1
    row = next(line for line in output.splitlines() if "noscope-failed" in line)
    # EXPIRES and SCOPES are both "-": no token, so nothing is known of the granted scopes;
    # QUOTA is "-" too: the answer carried no quota headers.
    assert re.search(r"^FAIL .* ms\s+-\s+-\s+-\s+getpaid rejected", row), row


def test_rotate_keys_without_a_usable_key_is_a_configuration_error(settings):
    credential = make_credential()
    before = ClientCredential.objects.values_list("client_secret", flat=True).get(pk=credential.pk)
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": []}
    output, code = run("getpaid_rotate_keys")
    assert code == 2
    assert "ENCRYPTION_KEYS" in output
    after = ClientCredential.objects.values_list("client_secret", flat=True).get(pk=credential.pk)
    assert str(after) == str(before)
