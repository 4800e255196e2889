"""``getpaid_check`` shows Auth0's token quota and usage (issue 14); the signals carry them.

The figures come from real token answers: the fake getpaid over HTTP (its Auth0 quota and
rate limit) or ``responses`` answers with the headers. Nothing of the code under test is
mocked; only the fake's limits clock is fixed, so no window rolls over mid-test.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import responses
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError

from django_getpaid_auth import get_token, service, usage
from django_getpaid_auth.exceptions import RateLimitedError
from django_getpaid_auth.models import ClientCredential
from django_getpaid_auth.quota import QuotaReport
from django_getpaid_auth.signals import token_obtained, token_request_failed
from django_getpaid_auth.testing import TokenEndpoint, auth0_error, make_jwt
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
JWT_RE = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
HOUR_START = 472_222 * 3600  # the fake's limits clock: a top of an hour (2023-11-14 22:00Z)
FAKE_NOW = HOUR_START + 60  # one minute in: per_hour t=3540

QUOTA_KEYS = {"seen_at", "status", "buckets", "rate_limit"}
BUCKET_KEYS = {"name", "limit", "remaining", "resets_at", "low", "current"}


def run(*args: str, **kwargs: Any) -> tuple[str, str, int]:
    """call_command; (stdout, stderr, exit status as manage.py would give it)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("getpaid_check", *args, stdout=out, stderr=err, **kwargs)
    except CommandError as exc:
        return out.getvalue(), err.getvalue() + str(exc), exc.returncode
    return out.getvalue(), err.getvalue(), 0


def run_json(*args: str) -> tuple[dict[str, Any], int]:
    out, _, code = run("--json", *args)
    return json.loads(out), code


def row_of(out: str, tenant_key: str) -> dict[str, str]:
    """The table row of ``tenant_key`` as {column: cell}, cut at the header's offsets."""
    lines = ANSI_RE.sub("", out).splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(name) for name in names]
    row = next(line for line in lines if line.split()[1:2] == [tenant_key])
    ends = [*starts[1:], None]
    return {n: row[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}


def check_quota_shape(result: dict[str, Any]) -> None:
    """The documented types of the new per-result fields (module docstring)."""
    assert type(result["token_requests_this_hour"]) in (int, type(None))
    assert type(result["last_used"]) in (str, type(None))
    if result["last_used"] is not None:
        assert datetime.fromisoformat(result["last_used"]).tzinfo is not None
    quota = result["quota"]
    if quota is None:
        return
    assert set(quota) == QUOTA_KEYS
    assert datetime.fromisoformat(quota["seen_at"]).tzinfo is not None
    assert type(quota["status"]) is int
    for bucket in quota["buckets"]:
        assert set(bucket) == BUCKET_KEYS
        assert type(bucket["name"]) is str
        assert type(bucket["limit"]) is int and type(bucket["remaining"]) is int
        assert type(bucket["low"]) is bool and type(bucket["current"]) is bool
        datetime.fromisoformat(bucket["resets_at"])
    if quota["rate_limit"] is not None:
        limit = quota["rate_limit"]
        assert set(limit) == {"limit", "remaining", "resets_at"}
        assert type(limit["limit"]) is int and type(limit["remaining"]) is int
        assert limit["resets_at"] is None or datetime.fromisoformat(limit["resets_at"])


@pytest.fixture
def fake(fake_getpaid_settings):
    fake_getpaid_settings.token_limits_clock = lambda: FAKE_NOW
    return fake_getpaid_settings


def add(fake, slug: str, secret: str, **kwargs: Any) -> ClientCredential:
    credential = make_credential(
        make_tenant(slug), client_id=f"client-{slug}", client_secret=secret, **kwargs
    )
    fake.register_client(credential.client_id, secret)
    return credential


# --------------------------------------------------------------------------- figures shown


def test_figures_of_real_token_answers_in_the_table_and_json(fake, canary, all_logs):
    fake.set_token_quota({"per_hour": 10, "per_day": 100})
    fake.set_token_rate_limit(30)
    acme = add(fake, "acme", canary)
    add(fake, "globex", canary)
    fake.set_token_quota({}, client_id="client-globex")  # no quota for this one

    before = time.time()
    get_token(acme.tenant)  # the app's own use: request 1, and "last used"
    out, err, code = run("--no-color")  # fresh checks: request 2 for acme

    assert code == 0, err
    assert fake.token_quota_usage("client-acme") == {"per_hour": 2, "per_day": 2}
    assert "QUOTA" in out.splitlines()[0]
    assert row_of(out, "acme")["QUOTA"] == "8/10 h, 98/100 d"
    assert row_of(out, "globex")["QUOTA"] == "-"  # rate limit only: no bucket to show
    assert re.search(r"^2 checked, 2 ok, 0 failed in \d+\.\ds$", out, re.M)

    document, code = run_json("--use-cache")  # no new token request: same figures
    assert code == 0
    assert fake.token_quota_usage("client-acme") == {"per_hour": 2, "per_day": 2}
    by_key = {r["tenant_key"]: r for r in document["results"]}
    for result in by_key.values():
        check_quota_shape(result)
    acme_result = by_key["acme"]
    quota = acme_result["quota"]
    assert quota["status"] == 200
    assert before - 1 <= datetime.fromisoformat(quota["seen_at"]).timestamp() <= time.time()
    assert [
        (b["name"], b["limit"], b["remaining"], b["low"], b["current"]) for b in quota["buckets"]
    ] == [("per_hour", 10, 8, False, True), ("per_day", 100, 98, False, True)]
    hour_reset = datetime.fromisoformat(quota["buckets"][0]["resets_at"]).timestamp()
    assert hour_reset == pytest.approx(time.time() + 3540, abs=60)
    assert quota["rate_limit"]["limit"] == 30
    # One limit for all clients: 3 requests so far, globex's check before or after acme's.
    assert quota["rate_limit"]["remaining"] in (27, 28)
    assert acme_result["token_requests_this_hour"] == 2
    last_used = datetime.fromisoformat(acme_result["last_used"]).timestamp()
    assert before - 1 <= last_used <= time.time()

    globex = by_key["globex"]
    assert globex["quota"]["buckets"] == []
    assert globex["quota"]["rate_limit"]["limit"] == 30
    assert globex["token_requests_this_hour"] == 1
    assert globex["last_used"] is None  # getpaid_check's own token is not a use

    for text in (out, err, json.dumps(document), all_logs.text):
        assert canary not in text
        assert not JWT_RE.search(text)


def test_rate_limit_remaining_follows_every_request(fake, canary):
    """The rate limit counts all clients together; each answer says what is left."""
    fake.set_token_rate_limit(30)
    add(fake, "acme", canary)
    document, _ = run_json()
    assert document["results"][0]["quota"]["rate_limit"]["remaining"] == 29
    document, _ = run_json()
    assert document["results"][0]["quota"]["rate_limit"]["remaining"] == 28
    assert document["results"][0]["token_requests_this_hour"] == 2


def test_low_bucket_is_marked_and_the_exit_status_stays_0(fake, canary):
    fake.set_token_quota({"per_hour": 5, "per_day": 100})
    acme = add(fake, "acme", canary)
    for _ in range(4):  # the app used 4 of 5 tokens this hour
        get_token(acme.tenant, force_refresh=True)

    out, err, code = run("--no-color")  # the check takes the last one: 0 of 5 left

    assert code == 0, err
    assert row_of(out, "acme")["QUOTA"] == "0/5 h!, 95/100 d"
    assert row_of(out, "acme")["STATUS"] == "OK"

    coloured, _, code = run(force_color=True, use_cache=True)
    assert code == 0
    row = next(line for line in coloured.splitlines() if " acme " in ANSI_RE.sub("", line))
    # The QUOTA cell alone is in the warning colour (the status keeps its own).
    styled = re.findall(r"\x1b\[[0-9;]*m([^\x1b]*)\x1b\[0m", row)
    assert [cell.strip() for cell in styled] == ["OK", "0/5 h!, 95/100 d"]

    document, code = run_json("--use-cache")
    assert code == 0 and document["ok"] is True and document["failed"] == 0
    hour, day = document["results"][0]["quota"]["buckets"]
    assert (hour["remaining"], hour["low"], day["low"]) == (0, True, False)


def test_low_means_under_20_percent(fake, canary):
    fake.set_token_quota({"per_hour": 10, "per_day": 10})
    acme = add(fake, "acme", canary)
    for _ in range(7):
        get_token(acme.tenant, force_refresh=True)
    out, _, _ = run("--no-color")  # 8th: 2 of 10 left, exactly 20 %: not low
    assert row_of(out, "acme")["QUOTA"] == "2/10 h, 2/10 d"
    out, _, _ = run("--no-color")  # 9th: 1 of 10 left
    assert row_of(out, "acme")["QUOTA"] == "1/10 h!, 1/10 d!"


def test_an_exhausted_quota_fails_the_check_and_shows_the_429s_figures(fake, canary, settings):
    """The check fails because no token came (exit 1), not because of the figures."""
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TOKEN_REQUEST_RETRIES": 0}
    fake.set_token_quota({"per_hour": 1})
    add(fake, "acme", canary)
    _, _, code = run("--no-color")
    assert code == 0
    out, _, code = run("--no-color")
    assert code == 1
    row = row_of(out, "acme")
    assert row["STATUS"] == "FAIL" and row["QUOTA"] == "0/1 h!"
    document, code = run_json("--use-cache")
    assert code == 1  # the failure is remembered, and --use-cache replays it
    quota = document["results"][0]["quota"]
    assert quota["status"] == 429
    assert document["results"][0]["token_requests_this_hour"] == 2


def test_stale_buckets_are_left_out_of_the_table_but_kept_in_json(fake, canary):
    acme = add(fake, "acme", canary)
    get_token(acme.tenant)  # a cached token, so --use-cache sends no request
    report = QuotaReport.from_dict(
        {
            "seen_at": time.time() - 7200,
            "status": 200,
            "buckets": [
                {"bucket": "per_hour", "limit": 10, "remaining": 1, "resets_at": time.time() - 10},
                {"bucket": "per_day", "limit": 100, "remaining": 50, "resets_at": time.time() + 60},
            ],
            "rate_limit": None,
        }
    )
    usage.record_requests(service.snapshot_of(acme), [report])
    out, _, code = run("--no-color", "--use-cache")
    assert code == 0
    assert row_of(out, "acme")["QUOTA"] == "50/100 d"  # the hour has reset since
    document, _ = run_json("--use-cache")
    buckets = document["results"][0]["quota"]["buckets"]
    assert [(b["name"], b["low"], b["current"]) for b in buckets] == [
        ("per_hour", True, False),
        ("per_day", False, True),
    ]


# --------------------------------------------------------------------------- nothing known


def test_no_figures_read_as_nulls(fake, canary):
    add(fake, "acme", canary)  # the fake sends no quota or rate-limit headers by default
    out, _, code = run("--no-color")
    assert code == 0
    assert row_of(out, "acme")["QUOTA"] == "-"
    document, _ = run_json()
    result = document["results"][0]
    check_quota_shape(result)
    assert result["quota"] is None
    assert result["last_used"] is None
    assert result["token_requests_this_hour"] == 2  # the two checks' requests are counted


def test_a_credential_whose_check_could_not_run_has_nulls(fake, canary, settings):
    """An environment that is not configured: no snapshot, so nothing is read for it."""
    add(fake, "acme", canary)
    bad = add(fake, "globex", canary)
    ClientCredential.objects.filter(pk=bad.pk).update(environment="live")
    environments = dict(settings.GETPAID_AUTH["ENVIRONMENTS"])
    environments.pop("live", None)
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENVIRONMENTS": environments}
    document, code = run_json()
    assert code == 1
    by_key = {r["tenant_key"]: r for r in document["results"]}
    assert by_key["globex"]["ok"] is False
    assert by_key["globex"]["quota"] is None
    assert by_key["globex"]["token_requests_this_hour"] is None
    assert by_key["acme"]["token_requests_this_hour"] == 1


GARBAGE = [
    "x",
    -1,
    10**20,
    float("nan"),
    b"\x00\xff",
    [1, 2, 3],
    {"seen_at": "soon", "status": 200, "buckets": [], "rate_limit": None},
    {"seen_at": time.time(), "status": 200, "buckets": "per_hour", "rate_limit": None},
    {
        "seen_at": time.time(),
        "status": 200,
        "buckets": [{"bucket": "per_hour", "limit": 10, "remaining": 11, "resets_at": 2e9}],
        "rate_limit": None,
    },
    {"seen_at": time.time(), "status": 200, "buckets": [{"bucket": "\x1b[2J"}], "rate_limit": 7},
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=lambda g: type(g).__name__ + str(g)[:20])
def test_garbage_in_the_cache_reads_as_nulls(fake, canary, garbage):
    acme = add(fake, "acme", canary)
    get_token(acme.tenant)  # a cached token: --use-cache sends no request, writes nothing
    snapshot = service.snapshot_of(acme)
    for key in usage.keys_of(snapshot, time.time()).values():
        cache.set(key, garbage)

    out, err, code = run("--no-color", "--use-cache")
    assert code == 0, err
    assert row_of(out, "acme")["QUOTA"] == "-"
    document, code = run_json("--use-cache")
    assert code == 0
    result = document["results"][0]
    assert (result["quota"], result["token_requests_this_hour"], result["last_used"]) == (
        None,
        None,
        None,
    )
    assert "\x1b" not in out


def test_one_cache_read_for_every_credential(fake, canary):
    for slug in ("a1", "a2", "a3", "a4"):
        add(fake, slug, canary)
    from django_getpaid_auth import cache_backend

    with mock.patch.object(cache_backend, "get_many", wraps=cache_backend.get_many) as spy:
        document, code = run_json()
    assert code == 0 and document["checked"] == 4
    usage_reads = [c for c in spy.call_args_list if any(":quota:" in k for k in c.args[0])]
    assert len(usage_reads) == 1
    assert sum(":quota:" in k for k in usage_reads[0].args[0]) == 4


# --------------------------------------------------------------------------- the docs' alerts


def _doc_block(marker: str) -> str:
    """The body of the code block in docs/operations.rst that contains ``marker``."""
    text = (ROOT / "docs" / "operations.rst").read_text()
    at = text.index(marker)
    start = text.rindex(".. code-block::", 0, at)
    body = text[text.index("\n", start) + 1 :]
    lines = []
    for line in body.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def _low_and_ok_documents(fake, canary) -> tuple[str, str]:
    fake.set_token_quota({"per_hour": 10, "per_day": 100})
    fake.set_token_quota({"per_hour": 1}, client_id="client-low")
    add(fake, "low", canary)
    add(fake, "fine", canary)
    low, _, code = run("--json")
    assert code == 0
    fine, _, code = run("--json", "--tenant", "fine")
    assert code == 0
    return low, fine


def test_the_python_alert_example_names_low_buckets(fake, canary):
    low, fine = _low_and_ok_documents(fake, canary)
    script = _doc_block("THRESHOLD = 0.2")
    alarm = subprocess.run(
        [sys.executable, "-c", script], input=low, capture_output=True, text=True, check=False
    )
    assert alarm.returncode == 1, alarm.stderr
    assert "low/sandbox: per_hour 0 of 1 left until 20" in alarm.stdout
    assert "fine" not in alarm.stdout
    quiet = subprocess.run(
        [sys.executable, "-c", script], input=fine, capture_output=True, text=True, check=False
    )
    assert (quiet.returncode, quiet.stdout) == (0, "")


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_the_jq_alert_examples(fake, canary):
    low, fine = _low_and_ok_documents(fake, canary)
    for marker, expect_low, expect_fine in (
        ("jq -e", ("false", 1), ("true", 0)),
        ("jq -r", None, None),
    ):
        line = _doc_block(marker)
        program = re.search(rf"{re.escape(marker)} '([^']+)'", line)
        assert program, line
        flag = marker.split()[1]
        answers = {}
        for name, document in (("low", low), ("fine", fine)):
            done = subprocess.run(
                ["jq", flag, program.group(1)],
                input=document,
                capture_output=True,
                text=True,
                check=False,
            )
            answers[name] = (done.stdout.strip(), done.returncode)
        if expect_low is not None:
            assert answers == {"low": expect_low, "fine": expect_fine}
        else:
            assert re.fullmatch(r"low/sandbox: per_hour 0 of 1 left until 20\S+", answers["low"][0])
            assert answers["fine"] == ("", 0)


# --------------------------------------------------------------------------- signals


@responses.activate
def test_signals_receive_quota_and_hourly_count_from_real_answers(settings, canary):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TOKEN_REQUEST_RETRIES": 0}
    tenant = make_tenant("acme")
    make_credential(tenant, client_id="acme-client", client_secret=canary)
    endpoint = TokenEndpoint(responses)

    def success_with_headers() -> tuple[int, dict[str, str], str]:
        """A 200 with a fresh token and Auth0's quota and rate-limit headers."""
        now = int(time.time())
        token = make_jwt({"sub": "acme-client@clients", "iat": now, "exp": now + 3600})
        body = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        headers = {
            "Content-Type": "application/json",
            "Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=7;t=3540,b=per_day;q=100;r=97;t=86340",
            "x-ratelimit-limit": "30",
            "x-ratelimit-remaining": "29",
            "x-ratelimit-reset": str(now + 60),
        }
        return 200, headers, json.dumps(body)

    seen: list[tuple[str, dict[str, Any]]] = []

    def on_obtained(sender: Any, **kwargs: Any) -> None:
        seen.append(("obtained", kwargs))

    def on_failed(sender: Any, **kwargs: Any) -> None:
        seen.append(("failed", kwargs))

    token_obtained.connect(on_obtained)
    token_request_failed.connect(on_failed)
    try:
        endpoint.fail_next(success_with_headers)
        get_token(tenant)
        endpoint.fail_next(
            auth0_error(
                429,
                "too_many_requests",
                "Quota exceeded",
                **{"Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=0;t=3000", "Retry-After": "3000"},
            )
        )
        with pytest.raises(RateLimitedError):
            get_token(tenant, force_refresh=True)
    finally:
        token_obtained.disconnect(on_obtained)
        token_request_failed.disconnect(on_failed)

    assert endpoint.count == 2
    assert [kind for kind, _ in seen] == ["obtained", "failed"]
    obtained, failed = seen[0][1], seen[1][1]
    quota = obtained["quota"]
    assert isinstance(quota, QuotaReport) and quota.status == 200
    assert [(b.name, b.limit, b.remaining) for b in quota.buckets] == [
        ("per_hour", 10, 7),
        ("per_day", 100, 97),
    ]
    assert quota.rate_limit is not None and quota.rate_limit.remaining == 29
    assert obtained["token_requests_this_hour"] == 1
    assert isinstance(failed["quota"], QuotaReport) and failed["quota"].status == 429
    assert [(b.name, b.remaining) for b in failed["quota"].buckets] == [("per_hour", 0)]
    assert failed["quota"].rate_limit is None
    assert failed["token_requests_this_hour"] == 2


@responses.activate
def test_signals_get_none_quota_when_the_answer_carried_no_headers(canary):
    tenant = make_tenant("acme")
    make_credential(tenant, client_id="acme-client", client_secret=canary)
    TokenEndpoint(responses)
    seen: list[dict[str, Any]] = []

    def on_obtained(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    token_obtained.connect(on_obtained)
    try:
        get_token(tenant)
    finally:
        token_obtained.disconnect(on_obtained)
    assert [(s["quota"], s["token_requests_this_hour"]) for s in seen] == [(None, 1)]


@responses.activate
def test_the_docs_signal_receiver_records_the_quota_left(canary):
    """The runnable example's quota lines (its checker in test_docs_examples sees none)."""
    from tests.test_docs_examples import RUNNABLE

    block = RUNNABLE["signal-receiver"]
    metrics = mock.Mock()
    namespace: dict[str, Any] = {"__name__": "docs_signal_receiver", "metrics": metrics}
    exec(compile(block["code"], block["where"], "exec"), namespace)  # noqa: S102
    tenant = make_tenant("acme")
    make_credential(tenant, client_id="acme-client", client_secret=canary)
    endpoint = TokenEndpoint(responses)
    endpoint.fail_next(
        auth0_error(
            429,
            "too_many_requests",
            "Quota exceeded",
            **{
                "Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=0;t=3000,b=per_day;q=100;r=40;t=9000",
                "Retry-After": "3000",
            },
        )
    )
    try:
        with pytest.raises(RateLimitedError):
            get_token(tenant)
    finally:
        token_request_failed.disconnect(namespace["report_token_failure"])
    metrics.increment.assert_called_once_with(
        "getpaid.token_failed", tags={"error": "RateLimitedError"}
    )
    assert metrics.gauge.call_args_list == [
        mock.call(
            "getpaid.token_quota_remaining",
            0,
            tags={"bucket": "per_hour", "environment": "sandbox"},
        ),
        mock.call(
            "getpaid.token_quota_remaining",
            40,
            tags={"bucket": "per_day", "environment": "sandbox"},
        ),
    ]
