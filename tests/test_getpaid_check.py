"""``manage.py getpaid_check``: exit codes, selection, output, recording, concurrency, secrecy."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
import responses
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError

from django_getpaid_auth.models import ClientCredential
from django_getpaid_auth.testing import TokenEndpoint
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
JWT_RE = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
SECRET = "right-secret"

# The documented --json shape (see the command's docstring).
TOP_LEVEL = {
    "ok": bool,
    "checked": int,
    "passed": int,
    "failed": int,
    "duration_ms": float,
    "results": list,
}
RESULT = {
    "credential_id": (int,),
    "tenant": (str,),
    "tenant_key": (str,),
    "environment": (str,),
    "client_id": (str,),
    "ok": (bool,),
    "latency_ms": (float, int, type(None)),
    "expires_at": (str, type(None)),
    "requested_scopes": (list,),
    "granted_scopes": (list,),
    "missing_scopes": (list,),
    "api_status": (int, type(None)),
    "error": (str, type(None)),
    "error_type": (str, type(None)),
    "checked_at": (str,),
    # issue 14: read from the shared cache (shape checked in tests/test_getpaid_check_quota.py)
    "quota": (dict, type(None)),
    "token_requests_this_hour": (int, type(None)),
    "last_used": (str, type(None)),
}


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*args, **kwargs) -> tuple[str, str, int]:
    """call_command; returns (stdout, stderr, exit code as manage.py would give it)."""
    out = kwargs.pop("stdout", None) or io.StringIO()
    err = kwargs.pop("stderr", None) or io.StringIO()
    try:
        call_command("getpaid_check", *args, stdout=out, stderr=err, **kwargs)
    except CommandError as exc:
        err.write(f"CommandError: {exc}\n")
        return out.getvalue(), err.getvalue(), exc.returncode
    return out.getvalue(), err.getvalue(), 0


def validate(document: dict) -> None:
    assert set(document) == set(TOP_LEVEL)
    for key, kind in TOP_LEVEL.items():
        assert type(document[key]) is kind, (key, document[key])
    assert document["checked"] == len(document["results"])
    assert document["passed"] + document["failed"] == document["checked"]
    assert document["ok"] is (document["failed"] == 0)
    for result in document["results"]:
        assert set(result) == set(RESULT), set(result) ^ set(RESULT)
        for key, kinds in RESULT.items():
            assert type(result[key]) in kinds, (key, result[key])
        for key in ("requested_scopes", "granted_scopes", "missing_scopes"):
            assert all(isinstance(s, str) for s in result[key])
        datetime.fromisoformat(result["checked_at"])
        if result["expires_at"] is not None:
            datetime.fromisoformat(result["expires_at"])
        assert result["environment"] in ("live", "sandbox")
        assert (result["error"] is None) is result["ok"]


def good(fake, slug: str, *, environment: str = "sandbox", scopes: str = "payments:read"):
    tenant = make_tenant(slug)
    credential = make_credential(
        tenant,
        environment=environment,
        client_id=f"client-{slug}-{environment}",
        client_secret=SECRET,
        scopes=scopes,
    )
    fake.register_client(credential.client_id, SECRET)
    return credential


# --------------------------------------------------------------------------- exit codes


def test_all_passing_exits_0_with_an_aligned_table(fake_getpaid_settings):
    fake = fake_getpaid_settings
    good(fake, "acme")
    good(fake, "globex", scopes="payments:read accounts:read")

    out, err, code = run("--no-color")

    assert code == 0, err
    lines = out.splitlines()
    header = lines[0]
    for column in ("STATUS", "TENANT", "ENV", "CLIENT", "LATENCY", "EXPIRES", "SCOPES", "ERROR"):
        assert column in header
    rows = [line for line in lines if line.startswith(("OK", "FAIL"))]
    assert len(rows) == 2 and all(row.startswith("OK ") for row in rows)
    # Aligned: every column starts at the same offset in each row as in the header.
    for column in ("TENANT", "ENV", "CLIENT", "LATENCY", "EXPIRES", "SCOPES"):
        offset = header.index(column)
        for row in rows:
            assert row[offset - 2 : offset] == "  " and row[offset] != " ", (column, row)
    assert "acme" in rows[0] and "globex" in rows[1]
    assert "client-acme-sandbox" not in out  # masked
    assert "clie…dbox" in out
    assert re.search(r"\b59:5\d \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\)", rows[0])
    assert "1/1 payments:read" in rows[0]
    assert "2/2 payments:read accounts:read" in rows[1]
    assert re.search(r"^2 checked, 2 ok, 0 failed in \d+\.\ds$", out, re.M)


def test_wrong_secret_exits_1_after_printing_the_table(fake_getpaid_settings):
    fake = fake_getpaid_settings
    good(fake, "acme")
    bad = make_credential(make_tenant("bad"), client_id="client-bad", client_secret="wrong")
    fake.register_client("client-bad", "the-real-one")

    out, err, code = run()

    assert code == 1
    assert "1 of 2 getpaid check(s) failed" in err
    fail = next(line for line in out.splitlines() if line.startswith("FAIL"))
    assert "bad" in fail and "getpaid rejected the client credentials" in fail
    assert "2 checked, 1 ok, 1 failed" in out
    bad.refresh_from_db()
    assert bad.last_check_ok is False


def test_scope_refused_by_the_token_endpoint_exits_1(fake_getpaid_settings):
    fake = fake_getpaid_settings
    make_credential(
        make_tenant("acme"),
        client_id="client-acme",
        client_secret=SECRET,
        scopes="payments:read accounts:read",
    )
    fake.register_client("client-acme", SECRET, scopes=("payments:read",))

    out, _, code = run("--json")

    assert code == 1
    document = json.loads(out)
    validate(document)
    (result,) = document["results"]
    assert result["ok"] is False
    assert result["error_type"] == "InvalidScopeError"
    assert "Client has not been granted scopes: accounts:read" in result["error"]
    assert result["expires_at"] is None and result["granted_scopes"] == []


def test_token_granted_with_fewer_scopes_is_a_missing_scopes_failure():
    credential = make_credential(make_tenant("acme"), scopes="payments:read accounts:read")
    with responses.RequestsMock() as rsps:
        endpoint = TokenEndpoint(rsps, scope="payments:read")
        out, _, code = run()
    assert code == 1
    assert endpoint.count == 1
    fail = next(line for line in out.splitlines() if line.startswith("FAIL"))
    assert "1/2 payments:read !accounts:read" in fail
    assert "getpaid did not grant: accounts:read" in fail
    credential.refresh_from_db()
    assert credential.last_check_ok is False
    assert credential.granted_scopes == "payments:read"
    assert credential.last_check_error == "getpaid did not grant: accounts:read"


def test_missing_scopes_in_json():
    make_credential(make_tenant("acme"), scopes="payments:read accounts:read")
    with responses.RequestsMock() as rsps:
        TokenEndpoint(rsps, scope="payments:read")
        out, _, code = run("--json")
    assert code == 1
    document = json.loads(out)
    validate(document)
    (result,) = document["results"]
    assert result["error_type"] == "MissingScopes"
    assert result["missing_scopes"] == ["accounts:read"]
    assert result["granted_scopes"] == ["payments:read"]
    assert result["requested_scopes"] == ["payments:read", "accounts:read"]


def test_no_credentials_exits_2(fake_getpaid_settings):
    out, err, code = run()
    assert code == 2
    assert "No active getpaid credential to check" in err
    assert out == ""


def test_only_inactive_credentials_exits_2(fake_getpaid_settings):
    make_credential(is_active=False)
    out, err, code = run("--json")
    assert code == 2
    assert "No active getpaid credential to check" in err
    assert out == ""  # no JSON on a usage error
    assert fake_getpaid_settings.token_request_count() == 0


def test_unknown_tenant_exits_2_and_checks_nothing(fake_getpaid_settings):
    fake = fake_getpaid_settings
    good(fake, "acme")
    out, err, code = run("--tenant", "acme", "--tenant", "nope")
    assert code == 2
    assert "Unknown tenant slug: nope" in err
    assert out == ""
    assert fake.token_request_count() == 0


def test_tenant_without_a_matching_credential_exits_2(fake_getpaid_settings):
    fake = fake_getpaid_settings
    good(fake, "acme")
    make_tenant("empty")
    _, err, code = run("--tenant", "acme", "--tenant", "empty")
    assert code == 2
    assert "No active getpaid credential for: empty" in err
    _, err, code = run("--tenant", "acme", "--environment", "live")
    assert code == 2
    assert "No active getpaid credential for environment live for: acme" in err
    assert fake.token_request_count() == 0


def test_an_unknown_tenant_key_is_shown_escaped(fake_getpaid_settings):
    good(fake_getpaid_settings, "acme")
    out, err, code = run("--tenant", "acme", "--tenant", "evil\x1b[2J\u202e")
    assert code == 2
    assert "\x1b" not in err and "\u202e" not in err
    assert "Unknown tenant slug: evil\\x1b[2J\\u202e." in err
    assert out == ""


def test_integer_tenant_keys_through_call_command(fake_getpaid_settings, settings):
    credential = good(fake_getpaid_settings, "acme")
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TENANT_KEY_FIELD": "id"}
    out, err, code = run("--json", tenants=[credential.tenant_id])
    assert code == 0, err
    assert [r["tenant_key"] for r in json.loads(out)["results"]] == [str(credential.tenant_id)]
    _, err, code = run(tenants=[{"id": 1}])
    assert code == 2
    assert "tenant keys are strings or integers, not {'id': 1}" in err


def test_json_times_are_to_the_second(fake_getpaid_settings):
    good(fake_getpaid_settings, "acme")
    out, _, code = run("--json")
    assert code == 0
    (result,) = json.loads(out)["results"]
    for key in ("checked_at", "expires_at"):
        moment = datetime.fromisoformat(result[key])
        assert moment.microsecond == 0 and result[key].endswith("+00:00"), result[key]


@pytest.mark.parametrize("keys", [[], ["not-a-fernet-key"]])
def test_missing_or_invalid_encryption_key_exits_2(fake_getpaid_settings, settings, keys):
    fake = fake_getpaid_settings
    good(fake, "acme")
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": keys}
    out, err, code = run()
    assert code == 2
    assert 'GETPAID_AUTH["ENCRYPTION_KEYS"]' in err
    assert out == ""
    assert fake.token_request_count() == 0


def test_bad_environment_exits_2(fake_getpaid_settings):
    good(fake_getpaid_settings, "acme")
    _, err, code = run("--environment", "staging")
    assert code == 2
    assert "invalid choice: 'staging'" in err
    _, err, code = run(environment="staging")  # call_command kwargs skip argparse choices
    assert code == 2
    assert "Unknown environment 'staging'" in err


@pytest.mark.parametrize("workers", ["0", "-3", "many"])
def test_bad_workers_exits_2(fake_getpaid_settings, workers):
    good(fake_getpaid_settings, "acme")
    _, err, code = run(f"--workers={workers}")
    assert code == 2
    assert "--workers" in err


def test_undecryptable_secret_is_a_failed_check_not_a_crash(fake_getpaid_settings, settings):
    fake = fake_getpaid_settings
    good(fake, "acme")
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "ENCRYPTION_KEYS": [django_settings.TEST_KEY_B],
    }
    good(fake, "lost")  # encrypted with key B only
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "ENCRYPTION_KEYS": [django_settings.TEST_KEY_A],
    }
    out, _, code = run("--json")
    assert code == 1
    document = json.loads(out)
    validate(document)
    by_key = {r["tenant_key"]: r for r in document["results"]}
    assert by_key["acme"]["ok"] is True
    assert by_key["lost"]["error_type"] == "CredentialDecryptionError"
    assert fake.token_request_count("client-lost-sandbox") == 0


# --------------------------------------------------------------------------- selection


def test_tenant_is_repeatable_and_environment_filters(fake_getpaid_settings):
    fake = fake_getpaid_settings
    good(fake, "a")
    good(fake, "b", environment="live")
    make_credential(
        ClientCredential.objects.get(client_id="client-b-live").tenant,
        environment="sandbox",
        client_id="client-b-sandbox",
        client_secret=SECRET,
    )
    fake.register_client("client-b-sandbox", SECRET)
    good(fake, "c")

    out, _, code = run("--tenant", "a", "--tenant", "b", "--json")
    assert code == 0
    document = json.loads(out)
    validate(document)
    assert sorted((r["tenant_key"], r["environment"]) for r in document["results"]) == [
        ("a", "sandbox"),
        ("b", "live"),
        ("b", "sandbox"),
    ]
    assert fake.token_request_count("client-c-sandbox") == 0

    out, _, code = run("--environment", "live", "--json")
    assert code == 0
    assert [(r["tenant_key"], r["environment"]) for r in json.loads(out)["results"]] == [
        ("b", "live")
    ]

    out, _, code = run(tenants=["b"], environment="sandbox", as_json=True)
    assert code == 0
    assert [r["client_id"] for r in json.loads(out)["results"]] == ["clie…dbox"]


def test_tenant_key_field_setting_is_honoured(fake_getpaid_settings, settings):
    fake = fake_getpaid_settings
    good(fake, "acme")
    good(fake, "globex")
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TENANT_KEY_FIELD": "name"}
    out, _, code = run("--tenant", "Globex", "--json")
    assert code == 0
    assert [r["tenant_key"] for r in json.loads(out)["results"]] == ["Globex"]
    _, err, code = run("--tenant", "globex")
    assert code == 2
    assert "Unknown tenant name: globex" in err


# --------------------------------------------------------------------------- json, recording


def test_json_is_one_document_with_the_documented_shape(fake_getpaid_settings):
    fake = fake_getpaid_settings
    good(fake, "acme", scopes="payments:read accounts:read")
    make_credential(make_tenant("bad"), client_id="client-bad", client_secret="nope")

    out, err, code = run("--json", "--probe-api")

    assert code == 1
    document = json.loads(out)  # the whole of stdout is one JSON document
    validate(document)
    assert document["ok"] is False
    assert (document["checked"], document["passed"], document["failed"]) == (2, 1, 1)
    assert document["duration_ms"] > 0
    ok, bad = document["results"]  # sorted by tenant key
    assert ok["tenant_key"] == "acme" and ok["tenant"] == "Acme"
    assert ok["ok"] is True and ok["api_status"] == 200 and ok["error"] is None
    assert ok["granted_scopes"] == ["accounts:read", "payments:read"]
    assert ok["missing_scopes"] == []
    assert bad["error_type"] == "InvalidClientError"
    assert "status=401" in bad["error"]
    assert "checked" not in err  # no progress when not a terminal


def test_results_are_recorded_on_the_credentials(fake_getpaid_settings):
    fake = fake_getpaid_settings
    ok = good(fake, "acme", scopes="payments:read accounts:read")
    bad = make_credential(make_tenant("bad"), client_id="client-bad", client_secret="nope")
    secret_version = ok.secret_version
    before = time.time()

    run()

    ok.refresh_from_db()
    bad.refresh_from_db()
    assert ok.last_check_ok is True
    assert ok.last_checked_at.timestamp() >= before - 1
    assert ok.last_check_error == ""
    assert ok.granted_scopes == "accounts:read payments:read"
    assert ok.secret_version == secret_version  # recording does not touch the secret
    assert ok.client_secret == SECRET
    assert bad.last_check_ok is False
    assert bad.last_checked_at is not None
    assert "getpaid rejected the client credentials" in bad.last_check_error
    assert bad.granted_scopes == ""


def test_use_cache_accepts_a_cached_token_and_the_default_fetches_a_fresh_one(
    fake_getpaid_settings,
):
    fake = fake_getpaid_settings
    credential = good(fake, "acme")
    client = credential.client_id

    assert run()[2] == 0
    assert fake.token_request_count(client) == 1
    assert run("--use-cache")[2] == 0
    assert fake.token_request_count(client) == 1
    assert run()[2] == 0
    assert fake.token_request_count(client) == 2


def test_use_cache_fetches_when_nothing_is_cached(fake_getpaid_settings):
    fake = fake_getpaid_settings
    credential = good(fake, "acme")
    assert run("--use-cache")[2] == 0
    assert fake.token_request_count(credential.client_id) == 1


def test_probe_api_calls_the_api_with_the_token(fake_getpaid_settings):
    fake = fake_getpaid_settings
    credential = good(fake, "acme")
    out, _, code = run("--probe-api", "--json")
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert result["api_status"] == 200
    assert fake.api_request_count(credential.client_id) == 1
    assert fake.api_requests[0]["path"] == "/sandbox/"

    run("--json")
    assert fake.api_request_count() == 1  # no probe unless asked


def test_probe_api_rejected_token_fails_the_check(fake_getpaid_settings, settings):
    fake = fake_getpaid_settings
    good(fake, "acme")
    # The sandbox token sent to the live API: the fake answers 401 (wrong audience).
    environments = dict(settings.GETPAID_AUTH["ENVIRONMENTS"])
    environments["sandbox"] = {**environments["sandbox"], "API_URL": fake.api_url("live")}
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENVIRONMENTS": environments}

    out, _, code = run("--probe-api", "--json")

    assert code == 1
    (result,) = json.loads(out)["results"]
    assert result["ok"] is False
    assert result["api_status"] == 401
    assert result["error_type"] == "ApiRejected"
    trace_id = fake.api_requests[-1]["trace_id"]
    assert result["error"] == f"API probe answered 401 (trace_id={trace_id})"


# --------------------------------------------------------------------------- concurrency


def test_checks_run_concurrently_with_one_token_request_each(
    fake_getpaid_settings, django_assert_max_num_queries, capsys
):
    fake = fake_getpaid_settings
    fake.token_latency = 0.3
    credentials = [good(fake, f"t{n:02d}") for n in range(50)]

    started = time.monotonic()
    with django_assert_max_num_queries(6):  # load, record: nothing per credential
        out, err, code = run("--workers", "16", "--json")
    elapsed = time.monotonic() - started

    assert code == 0, err
    document = json.loads(out)
    assert document["passed"] == 50
    assert elapsed < 50 * 0.3 / 4, elapsed
    for credential in credentials:
        assert fake.token_request_count(credential.client_id) == 1
    assert ClientCredential.objects.filter(last_check_ok=True).count() == 50
    with capsys.disabled():
        print(f"\n[getpaid_check] 50 tenants, 0.3 s token latency, 16 workers: {elapsed:.2f}s")


def test_workers_bound_the_concurrency(fake_getpaid_settings):
    fake = fake_getpaid_settings
    fake.token_latency = 0.2
    for n in range(4):
        good(fake, f"t{n}")
    started = time.monotonic()
    assert run("--workers", "1")[2] == 0
    assert time.monotonic() - started >= 4 * 0.2


# --------------------------------------------------------------------------- progress


def test_progress_on_a_terminal_only(fake_getpaid_settings):
    fake = fake_getpaid_settings
    good(fake, "a")
    good(fake, "b")

    _, err, code = run(stderr=TTY())
    assert code == 0
    assert "\r checked 0/2" in err and "\r checked 2/2" in err

    _, err, code = run(stderr=TTY(), no_progress=True)
    assert code == 0
    assert "checked" not in err

    _, err, code = run()
    assert code == 0
    assert err == ""


# --------------------------------------------------------------------------- secrecy


@pytest.mark.parametrize("passing", [True, False], ids=["passing", "failing"])
def test_no_secret_or_token_in_the_output(fake_getpaid_settings, canary, all_logs, passing):
    fake = fake_getpaid_settings
    credential = make_credential(make_tenant("acme"), client_id="client-acme", client_secret=canary)
    fake.register_client("client-acme", canary if passing else "something-else")

    for args in (["--verbosity", "3", "--probe-api"], ["--verbosity", "3", "--json"]):
        out, err, code = run(*args, stderr=TTY())
        assert code == (0 if passing else 1)
        for text in (out, err, all_logs.text):
            assert canary not in text
            assert not JWT_RE.search(text), JWT_RE.search(text).group()
            assert "client-acme" not in text
    credential.refresh_from_db()
    assert canary not in credential.last_check_error


def test_verbose_output_adds_details(fake_getpaid_settings):
    fake = fake_getpaid_settings
    good(fake, "acme")
    out, _, code = run("--verbosity", "2", "--probe-api")
    assert code == 0
    detail = next(line for line in out.splitlines() if line.startswith("acme/sandbox: "))
    assert re.search(r"token_fingerprint=[0-9a-f]{12}\b", detail)
    assert "granted=payments:read" in detail and "api_status=200" in detail

    out, _, code = run("--verbosity", "0")
    assert code == 0
    assert out.strip().startswith("1 checked, 1 ok, 0 failed in ")
    assert "STATUS" not in out


# --------------------------------------------------------------------------- real process


def test_exit_codes_of_a_real_process(tmp_path, fake_getpaid, canary):
    fake = fake_getpaid
    settings_file = tmp_path / "check_settings.py"
    settings_file.write_text(
        "from tests.settings import *  # noqa\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': {str(tmp_path / 'db.sqlite3')!r}}}}}\n"
        f"GETPAID_AUTH = {{**GETPAID_AUTH, **{fake.getpaid_auth_settings()!r}}}\n"
        "import os\n"
        "if os.environ.get('NO_KEYS'):\n"
        "    GETPAID_AUTH = {**GETPAID_AUTH, 'ENCRYPTION_KEYS': []}\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "check_settings",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
    }
    env.pop("DATABASE_URL", None)

    def manage(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )

    # --skip-checks: django_getpaid_auth's database-tagged system check queries the
    # credential table, which `migrate` has not created yet on a fresh database.
    migrated = manage("migrate", "--verbosity", "0", "--skip-checks")
    assert migrated.returncode == 0, migrated.stderr

    result = manage("getpaid_check")
    assert result.returncode == 2, result.stderr
    assert "No active getpaid credential" in result.stderr

    fake.register_client("client-good", canary)
    fake.register_client("client-bad", "the-real-one")
    setup = textwrap.dedent(
        f"""
        import django; django.setup()
        from django_getpaid_auth.models import ClientCredential, Tenant
        for slug, client_id in (("good", "client-good"), ("bad", "client-bad")):
            ClientCredential.objects.create(
                tenant=Tenant.objects.create(slug=slug, name=slug),
                client_id=client_id,
                client_secret={canary!r},
                scopes="payments:read",
            )
        """
    )
    created = subprocess.run(
        [sys.executable, "-c", setup], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert created.returncode == 0, created.stderr

    result = manage("getpaid_check", "--tenant", "good", "--verbosity", "3", "--probe-api")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 checked, 1 ok, 0 failed" in result.stdout

    result = manage("getpaid_check", "--verbosity", "3", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    document = json.loads(result.stdout)
    validate(document)
    assert (document["passed"], document["failed"]) == (1, 1)
    assert "1 of 2 getpaid check(s) failed" in result.stderr
    for text in (result.stdout, result.stderr):
        assert canary not in text
        assert not JWT_RE.search(text)

    result = manage("getpaid_check", "--environment", "staging")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr

    result = manage("getpaid_check", NO_KEYS="1")  # fails the system checks first
    assert result.returncode == 2, result.stderr
    assert "ENCRYPTION_KEYS" in result.stderr
    result = manage("getpaid_check", "--skip-checks", NO_KEYS="1")  # then our own check
    assert result.returncode == 2, result.stderr
    assert "No encryption key configured" in result.stderr

    result = manage("getpaid_check", "--tenant", "nope")
    assert result.returncode == 2
    assert "Unknown tenant slug: nope" in result.stderr
