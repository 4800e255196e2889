"""Token warming (``getpaid_refresh``, ``refresh_due_tokens``): idle tenants cost nothing.

Every test counts token requests at the fake getpaid: that is what the Auth0 quota counts.
A credential is marked as used through the public API (``get_token``), and a token is made
due by getting it while the fake issues short-lived tokens.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from datetime import datetime

import django
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db import connections
from django.test import override_settings

from django_getpaid_auth import clock, get_token, invalidate_token, refresh
from django_getpaid_auth.models import ClientCredential
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

SHORT = 300  # seconds: a token this long-lived is due within the default 600 s window
LONG = 3600
HALF_OF_SHORT = SHORT / 2 + 1  # refresh_if_due never renews a token younger than this

TOP_LEVEL = {
    "ok": bool,
    "selected": int,
    "refreshed": int,
    "fresh": int,
    "idle": int,
    "failed": int,
    "due_within": float,
    "used_within": float,
    "duration_ms": float,
    "results": list,
}
RESULT = {
    "credential_id": (int,),
    "tenant": (str,),
    "tenant_key": (str,),
    "environment": (str,),
    "client_id": (str,),
    "status": (str,),
    "last_used": (str, type(None)),
    "expires_at": (str, type(None)),
    "error": (str, type(None)),
    "error_type": (str, type(None)),
}


def run(*args, **kwargs) -> tuple[str, str, int]:
    """call_command; returns (stdout, stderr, exit code as manage.py would give it)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("getpaid_refresh", *args, stdout=out, stderr=err, **kwargs)
    except CommandError as exc:
        err.write(f"CommandError: {exc}\n")
        return out.getvalue(), err.getvalue(), exc.returncode
    return out.getvalue(), err.getvalue(), 0


def run_json(*args, **kwargs) -> tuple[dict, int]:
    out, err, code = run("--json", *args, **kwargs)
    assert code in (0, 1), err
    document = json.loads(out)
    validate(document)
    return document, code


def validate(document: dict) -> None:
    assert set(document) == set(TOP_LEVEL)
    for key, kind in TOP_LEVEL.items():
        assert type(document[key]) is kind, (key, document[key])
    for result in document["results"]:
        assert set(result) == set(RESULT)
        for key, kinds in RESULT.items():
            assert isinstance(result[key], kinds), (key, result[key])
        assert result["status"] in refresh.STATUSES
        for key in ("last_used", "expires_at"):
            if result[key] is not None:
                assert datetime.fromisoformat(result[key]).tzinfo is not None
    statuses = [r["status"] for r in document["results"]]
    assert document["selected"] == len(statuses)
    for status in refresh.STATUSES:
        assert document[status] == statuses.count(status)
    assert document["ok"] is (document["failed"] == 0)


def by_tenant(document: dict) -> dict[str, dict]:
    return {r["tenant_key"]: r for r in document["results"]}


def tenant_with_credential(fake, slug: str, secret: str = "the-secret"):
    tenant = make_tenant(slug=slug)
    make_credential(tenant, client_id=f"{slug}-client", client_secret=secret)
    fake.register_client(f"{slug}-client", secret)
    return tenant


@pytest.fixture
def fake(fake_getpaid_settings):
    fake_getpaid_settings.token_lifetime = LONG
    return fake_getpaid_settings


def test_idle_tenants_cost_no_token_request(fake):
    for slug in ("idle-a", "idle-b"):
        tenant_with_credential(fake, slug)  # never used: no token, no use recorded
    document, code = run_json("--due-within", "99999")
    assert code == 0
    assert [r["status"] for r in document["results"]] == ["idle", "idle"]
    assert [r["last_used"] for r in document["results"]] == [None, None]
    assert fake.token_request_count() == 0


def test_a_tenant_not_used_recently_is_idle_even_when_its_token_is_missing(fake):
    tenant = tenant_with_credential(fake, "quiet")
    get_token(tenant)  # used (and one token request)
    invalidate_token(tenant)  # no token cached any more
    time.sleep(0.05)
    document, code = run_json("--used-within", "0.01")
    assert code == 0
    (result,) = document["results"]
    assert result["status"] == "idle" and result["last_used"] is not None
    assert fake.token_request_count() == 1  # only the get_token above

    # Within the (default) hour it counts as used: the missing token is fetched.
    document, _code = run_json()
    assert by_tenant(document)["quiet"]["status"] == "refreshed"
    assert fake.token_request_count() == 2


def test_a_used_tenant_whose_token_is_due_is_refreshed_once(fake, fake_clock):
    fake.token_lifetime = SHORT
    tenant = tenant_with_credential(fake, "busy")
    first = get_token(tenant)
    fake_clock.advance(HALF_OF_SHORT)  # no token is renewed in the first half of its life
    fake.token_lifetime = LONG  # the renewed token is not due again
    document, code = run_json()  # default --due-within 600 > SHORT
    assert code == 0
    result = by_tenant(document)["busy"]
    assert result["status"] == "refreshed"
    assert fake.token_request_count("busy-client") == 2
    renewed = get_token(tenant)  # served from the cache: no request
    assert renewed.value != first.value
    assert datetime.fromisoformat(result["expires_at"]) == renewed.expires_at
    assert fake.token_request_count("busy-client") == 2

    document, _code = run_json()  # now fresh: nothing to do
    assert by_tenant(document)["busy"]["status"] == "fresh"
    assert fake.token_request_count("busy-client") == 2


def test_a_used_tenant_whose_token_is_not_due_costs_nothing(fake, fake_clock):
    tenant = tenant_with_credential(fake, "steady")
    get_token(tenant)
    document, code = run_json("--due-within", str(LONG - 120))
    assert code == 0
    assert by_tenant(document)["steady"]["status"] == "fresh"
    assert fake.token_request_count() == 1

    # A window longer than the token's remaining life makes it due, once the token is in
    # the second half of its life.
    fake_clock.advance(LONG / 2 + 1)
    document, _code = run_json("--due-within", str(LONG + 60))
    assert by_tenant(document)["steady"]["status"] == "refreshed"
    assert fake.token_request_count() == 2


def test_only_used_and_due_credentials_are_refreshed_in_a_mixed_run(fake, fake_clock):
    fake.token_lifetime = SHORT
    used_due = tenant_with_credential(fake, "a-due")
    get_token(used_due)
    fake.token_lifetime = LONG
    used_fresh = tenant_with_credential(fake, "b-fresh")
    get_token(used_fresh)
    tenant_with_credential(fake, "c-idle")
    fake.reset_counters()
    fake_clock.advance(HALF_OF_SHORT)

    out, err, code = run()
    assert code == 0, err
    assert fake.token_request_count() == 1
    assert fake.token_request_count("a-due-client") == 1
    lines = out.splitlines()
    assert lines[0].split() == [
        "STATUS",
        "TENANT",
        "ENV",
        "CLIENT",
        "LAST",
        "USED",
        "EXPIRES",
        "ERROR",
    ]
    assert lines[1].split()[:3] == ["REFRESHED", "a-due", "sandbox"]
    assert lines[2].split()[:3] == ["FRESH", "b-fresh", "sandbox"]
    assert lines[3].split()[:3] == ["IDLE", "c-idle", "sandbox"]
    assert "3 credential(s): 1 refreshed, 1 fresh, 1 idle, 0 failed" in out


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_refresh_a_due_credential_once(fake, fake_clock):
    fake.token_lifetime = SHORT
    tenant = tenant_with_credential(fake, "shared")
    get_token(tenant)
    fake_clock.advance(HALF_OF_SHORT)
    fake.token_lifetime = LONG
    fake.token_latency = 0.3  # both runs are in flight at the same time
    fake.reset_counters()
    barrier = threading.Barrier(2)
    outcomes: list[tuple[str, str, int]] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(run("--json"))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 2
    statuses = []
    for out, err, code in outcomes:
        assert code == 0, err
        document = json.loads(out)
        validate(document)
        statuses.append(by_tenant(document)["shared"]["status"])
    assert "refreshed" in statuses and set(statuses) <= {"refreshed", "fresh"}
    assert fake.token_request_count("shared-client") == 1


def test_a_failed_refresh_exits_1_naming_the_error_class_without_the_secret(fake, canary, all_logs):
    tenant = tenant_with_credential(fake, "broken", secret=canary)
    tenant_with_credential(fake, "fine")
    get_token(tenant)
    get_token("fine")
    invalidate_token(tenant)
    invalidate_token("fine")
    fake.register_client("broken-client", "rotated-at-getpaid")  # our secret is wrong now
    fake.reset_counters()

    out, err, code = run()
    assert code == 1
    assert "FAILED" in out and "InvalidClientError" in out
    assert "1 refreshed, 0 fresh, 0 idle, 1 failed" in out
    assert "1 of 2 getpaid token refresh(es) failed" in err

    invalidate_token("fine")
    document, code = run_json()
    assert code == 1
    assert document["ok"] is False
    broken = by_tenant(document)["broken"]
    assert broken["status"] == "failed" and broken["error_type"] == "InvalidClientError"
    assert broken["error"]
    assert by_tenant(document)["fine"]["status"] == "refreshed"

    warnings = [
        r
        for r in all_logs.records
        if r.name == "django_getpaid_auth.refresh" and r.levelno == logging.WARNING
    ]
    assert warnings and "tenant=Broken" in warnings[0].getMessage()
    everything = out + err + json.dumps(document) + all_logs.text
    assert canary not in everything


def test_json_document_fields(fake):
    tenant = tenant_with_credential(fake, "json-used")
    get_token(tenant)
    tenant_with_credential(fake, "json-idle")
    document, code = run_json("--due-within", "10", "--used-within", "120")
    assert code == 0
    assert document["due_within"] == 10.0 and document["used_within"] == 120.0
    assert document["duration_ms"] >= 0
    used, idle = by_tenant(document)["json-used"], by_tenant(document)["json-idle"]
    assert used["status"] == "fresh"
    assert abs(datetime.fromisoformat(used["last_used"]).timestamp() - time.time()) < 60
    expires_at = get_token(tenant).expires_at
    assert datetime.fromisoformat(used["expires_at"]) == expires_at.replace(microsecond=0)
    # Times to the second, written by the one helper getpaid_check's --json uses too.
    assert used["last_used"] == clock.iso(datetime.fromisoformat(used["last_used"]).timestamp())
    assert used["expires_at"] == clock.iso(expires_at.timestamp())
    assert used["client_id"] == "json…ient"  # masked
    assert used["environment"] == "sandbox" and used["tenant"] == "Json-Used"
    assert (used["error"], used["error_type"]) == (None, None)
    assert (idle["status"], idle["last_used"], idle["expires_at"]) == ("idle", None, None)


def test_selection_by_tenant_and_environment(fake):
    tenant = tenant_with_credential(fake, "sel-a")
    make_credential(tenant, environment="live", client_id="sel-a-live")
    tenant_with_credential(fake, "sel-b")
    make_credential(make_tenant(slug="sel-off"), is_active=False)

    document, _ = run_json("--tenant", "sel-a")
    assert [(r["tenant_key"], r["environment"]) for r in document["results"]] == [
        ("sel-a", "live"),
        ("sel-a", "sandbox"),
    ]
    document, _ = run_json("--environment", "sandbox")
    assert [r["tenant_key"] for r in document["results"]] == ["sel-a", "sel-b"]
    assert fake.token_request_count() == 0


def test_nothing_configured_is_not_an_error(fake):
    document, code = run_json()
    assert code == 0 and document["selected"] == 0 and document["ok"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["--due-within", "-1"],
        ["--used-within", "soon"],
        ["--due-within", "nan"],
        ["--used-within", "inf"],
        ["--environment", "staging"],
        ["--tenant", "nobody"],
    ],
)
def test_usage_errors_exit_2_with_nothing_on_stdout(fake, args):
    tenant_with_credential(fake, "present")
    out, err, code = run(*args)
    assert code == 2, err
    assert out == ""
    assert fake.token_request_count() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"due_within": -5}, "due_within must be a non-negative number of seconds"),
        ({"used_within": "x"}, "used_within must be a number of seconds"),
        ({"used_within": True}, "used_within must be a number of seconds"),
        ({"due_within": math.inf}, "due_within must be a non-negative number of seconds"),
        ({"environment": "staging"}, "Unknown environment 'staging'"),
        ({"tenants": ["nobody"]}, "Unknown tenant slug: nobody"),
        ({"tenants": ["bare"]}, "No active getpaid credential for: bare"),
    ],
)
def test_call_command_options_are_validated_too(fake, options, message):
    make_tenant(slug="bare")
    out, err, code = run(**options)
    assert code == 2
    assert message in err
    assert out == ""


def test_integer_tenant_keys_are_tenant_keys(fake, settings):
    """A task called with ``tenants=[42]`` (JSON has numbers) selects tenant 42."""
    tenant = tenant_with_credential(fake, "by-id")
    tenant_with_credential(fake, "other")
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TENANT_KEY_FIELD": "id"}
    report = refresh.run(tenants=[tenant.pk, str(tenant.pk)])
    assert [(r.tenant_key, r.status) for r in report.results] == [(str(tenant.pk), "idle")]
    with pytest.raises(refresh.SelectionError, match=r"^Unknown tenant id: 999999\.$"):
        refresh.run(tenants=[tenant.pk, 999999])


@pytest.mark.parametrize(
    ("tenants", "shown"),
    [
        ([{"slug": "acme"}], "{'slug': 'acme'}"),
        ([["acme"]], "['acme']"),
        (["acme", None], "None"),
        ([1.5], "1.5"),
        ([True], "True"),
        ([b"acme"], "b'acme'"),
        (42, "42"),
        ({"acme": 1}, "{'acme': 1}"),
    ],
)
def test_tenant_keys_must_be_strings_or_integers(fake, tenants, shown):
    tenant_with_credential(fake, "acme")
    with pytest.raises(refresh.SelectionError) as excinfo:
        refresh.run(tenants=tenants)
    assert isinstance(excinfo.value, ValueError)
    assert "tenant keys are strings or integers" in str(excinfo.value)
    assert shown in str(excinfo.value)
    assert fake.token_request_count() == 0


def test_an_unknown_tenant_key_is_shown_escaped(fake):
    with pytest.raises(refresh.SelectionError) as excinfo:
        refresh.run(tenants=["evil\x1b[2J"])
    assert "\x1b" not in str(excinfo.value)
    assert "Unknown tenant slug: evil\\x1b[2J." in str(excinfo.value)


def test_a_credential_without_a_snapshot_fails_with_a_warning(fake, canary, settings, all_logs):
    """An environment the settings no longer define: FAILED, and logged like any failure."""
    tenant = tenant_with_credential(fake, "lost-env", secret=canary)
    ClientCredential.objects.filter(tenant=tenant).update(environment="live")
    tenant_with_credential(fake, "fine")
    get_token("fine")
    environments = dict(settings.GETPAID_AUTH["ENVIRONMENTS"])
    environments.pop("live")
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENVIRONMENTS": environments}

    document, code = run_json()
    assert code == 1
    lost = by_tenant(document)["lost-env"]
    assert lost["status"] == "failed" and lost["error_type"]
    warnings = [
        r.getMessage()
        for r in all_logs.records
        if r.name == "django_getpaid_auth.refresh" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, warnings
    assert "tenant=Lost-Env" in warnings[0] and "environment=live" in warnings[0]
    assert lost["error"] in warnings[0]
    assert canary not in all_logs.text + json.dumps(document)


def test_both_commands_share_the_usage_error_base():
    from django_getpaid_auth.management.commands import _base, getpaid_check, getpaid_refresh

    for module in (getpaid_check, getpaid_refresh):
        assert issubclass(module.Command, _base.GetpaidCommand)
        assert "create_parser" not in vars(module.Command)
        assert "check" not in vars(module.Command)


def test_system_check_errors_are_configuration_errors(fake, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": ["not-a-fernet-key"]}
    with pytest.raises(SystemCheckError) as excinfo:
        call_command("getpaid_refresh", skip_checks=False, stdout=io.StringIO())
    assert excinfo.value.returncode == 2


@pytest.mark.parametrize("keys", [[], ["not-a-fernet-key"]])
def test_missing_or_invalid_encryption_key_exits_2(fake, settings, keys):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": keys}
    out, err, code = run()
    assert code == 2
    assert 'GETPAID_AUTH["ENCRYPTION_KEYS"]' in err
    assert out == ""


# --- the django.tasks task -----------------------------------------------------------------

IMMEDIATE = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}


@pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks is new in Django 6.0")
def test_task_refreshes_due_tokens_with_the_immediate_backend(fake, fake_clock):
    from django.tasks import TaskResultStatus

    from django_getpaid_auth.tasks import refresh_due_tokens

    fake.token_lifetime = SHORT
    tenant = tenant_with_credential(fake, "task-due")
    get_token(tenant)
    fake.token_lifetime = LONG
    tenant_with_credential(fake, "task-idle")
    fake.reset_counters()
    fake_clock.advance(HALF_OF_SHORT)  # no token is renewed in the first half of its life

    with override_settings(TASKS=IMMEDIATE):
        result = refresh_due_tokens.enqueue()
        assert result.status == TaskResultStatus.SUCCESSFUL
        document = result.return_value
        validate(document)
        assert by_tenant(document)["task-due"]["status"] == "refreshed"
        assert by_tenant(document)["task-idle"]["status"] == "idle"
        assert fake.token_request_count() == 1

        again = refresh_due_tokens.enqueue(due_within=600, used_within=3600, tenants="task-due")
        assert [r["status"] for r in again.return_value["results"]] == ["fresh"]
        assert fake.token_request_count() == 1

        bad = refresh_due_tokens.enqueue(due_within=-1)
        assert bad.status == TaskResultStatus.FAILED
        assert bad.errors[0].exception_class is refresh.SelectionError


@pytest.mark.skipif(django.VERSION >= (6, 0), reason="Django 6.0+ has django.tasks")
def test_task_module_names_django_6_on_older_django():
    import sys

    sys.modules.pop("django_getpaid_auth.tasks", None)
    with pytest.raises(ImportError, match=r"needs Django 6\.0 or later"):
        import django_getpaid_auth.tasks  # noqa: F401
