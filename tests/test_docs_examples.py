"""The documentation's code examples and reference tables agree with the code.

- Every ``.. code-block:: python`` in ``docs/*.rst`` and ``README.rst`` must compile.
- A block preceded by the comment ``.. runnable: <name>`` is executed by the checker of
  that name below, which also asserts what the example is meant to show. Every runnable
  block needs a checker and every checker a block, so an example cannot silently drop out.
- The configuration reference lists exactly the settings in ``conf.DEFAULTS``, each with
  its default; the system check table lists exactly the check ids the package emits.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import responses
from cryptography.fernet import Fernet
from django.core import checks
from django.test import RequestFactory, override_settings
from django.utils.module_loading import import_string

from django_getpaid_auth.conf import DEFAULTS, TENANT_MODEL_SETTING
from django_getpaid_auth.models import ClientCredential, Tenant

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*sorted((ROOT / "docs").glob("*.rst")), ROOT / "README.rst"]

_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. code-block:: (?P<lang>\S+)\s*$")
_RUNNABLE = re.compile(r"^ *\.\. runnable: (?P<name>[\w-]+)\s*$")


def _blocks(path: Path) -> list[dict]:
    """Code blocks of one reST file: language, runnable name (or None), code, line."""
    lines = path.read_text().splitlines()
    found, pending = [], None
    for number, line in enumerate(lines):
        marker = _RUNNABLE.match(line)
        if marker:
            pending = (marker["name"], number)
            continue
        directive = _DIRECTIVE.match(line)
        if not directive:
            if line.strip() and pending:
                raise AssertionError(
                    f"{path.name}:{pending[1] + 1}: runnable marker not followed by a code block"
                )
            continue
        indent, body, i = len(directive["indent"]), [], number + 1
        while i < len(lines) and lines[i].strip().startswith(":") and lines[i].strip() != ":":
            i += 1  # directive options
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        found.append(
            {
                "lang": directive["lang"],
                "name": pending[0] if pending else None,
                "code": textwrap.dedent("\n".join(body)).strip() + "\n",
                "where": f"{path.relative_to(ROOT)}:{number + 1}",
            }
        )
        pending = None
    return found


ALL_BLOCKS = [block for path in SOURCES for block in _blocks(path)]
RUNNABLE = {block["name"]: block for block in ALL_BLOCKS if block["name"]}
CHECKED: set[str] = set()


def checks_example(*names: str):
    """Mark a test as the checker of these runnable examples."""
    CHECKED.update(names)
    return lambda test: test


def _run(name: str, namespace: dict | None = None) -> dict:
    block = RUNNABLE[name]
    namespace = {"__name__": f"docs_example_{name.replace('-', '_')}", **(namespace or {})}
    exec(compile(block["code"], block["where"], "exec"), namespace)  # noqa: S102
    return namespace


def _package_errors(**overrides) -> list[checks.CheckMessage]:
    """The package's system check errors (not warnings) with these settings."""
    with override_settings(**overrides):
        messages = checks.run_checks()
    return [
        m
        for m in messages
        if (m.id or "").startswith("django_getpaid_auth.") and m.level >= checks.ERROR
    ]


@pytest.fixture
def fernet_key(monkeypatch):
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("GETPAID_ENCRYPTION_KEY", key)
    return key


@pytest.fixture
def acme(fake_getpaid_settings):
    """Tenant "acme" with a sandbox credential that the fake getpaid accepts."""
    fake_getpaid_settings.register_client("acme-client", "acme-secret", scopes="payments:read")
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    ClientCredential.objects.create(
        tenant=tenant,
        environment="sandbox",
        client_id="acme-client",
        client_secret="acme-secret",
        scopes="payments:read",
    )
    return tenant


# --- every block ------------------------------------------------------------------------


def test_the_sources_have_runnable_examples():
    assert len(RUNNABLE) >= 10
    names = [block["name"] for block in ALL_BLOCKS if block["name"]]
    assert len(names) == len(set(names)), "duplicate runnable names"
    assert all(block["lang"] == "python" for block in RUNNABLE.values())


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b["lang"] == "python"], ids=lambda b: b["where"]
)
def test_every_python_block_compiles(block):
    compile(block["code"], block["where"], "exec")


def test_every_runnable_block_has_a_checker_and_every_checker_a_block():
    assert set(RUNNABLE) == CHECKED


# --- reference tables -------------------------------------------------------------------


def test_configuration_reference_lists_every_setting_with_its_default():
    text = (ROOT / "docs" / "configuration.rst").read_text()
    headings = re.findall(r"^``([A-Z_]+): [^=`]+ = (.+)``\n-+$", text, flags=re.MULTILINE)
    documented = dict(headings)
    assert set(documented) == set(DEFAULTS) | {TENANT_MODEL_SETTING}
    for name, default in documented.items():
        if name == "ENVIRONMENTS":
            continue  # shown in full by the runnable "environments-default" block
        expected = "django_getpaid_auth.Tenant" if name == TENANT_MODEL_SETTING else DEFAULTS[name]
        assert ast.literal_eval(default) == expected, name
        assert type(ast.literal_eval(default)) is type(expected), name


def test_system_check_table_lists_every_check_id():
    text = (ROOT / "docs" / "operations.rst").read_text()
    table = text[text.index(".. _system-checks:") :]
    documented = set(re.findall(r"^``([EW]\d{3})``", table, flags=re.MULTILINE))
    package = ROOT / "django_getpaid_auth"
    emitted = {
        match
        for source in package.rglob("*.py")
        for match in re.findall(r"django_getpaid_auth\.([EW]\d{3})", source.read_text())
    }
    assert documented == emitted


# --- runnable examples ------------------------------------------------------------------


@checks_example("readme-settings")
def test_example_readme_settings(fernet_key):
    ns = _run("readme-settings", {"os": os, "INSTALLED_APPS": ["django.contrib.admin"]})
    assert ns["INSTALLED_APPS"][-1] == "django_getpaid_auth"
    assert ns["GETPAID_AUTH"] == {"ENCRYPTION_KEYS": [fernet_key]}
    assert _package_errors(GETPAID_AUTH=ns["GETPAID_AUTH"]) == []


@checks_example("readme-usage")
@pytest.mark.django_db
def test_example_readme_usage(acme, fake_getpaid_settings):
    ns = _run("readme-usage")
    assert ns["response"].status_code == 200
    assert len(ns["response"].json()["data"]) == 3
    assert fake_getpaid_settings.token_request_count("acme-client") == 1


@checks_example("settings-install")
def test_example_settings_install(fernet_key):
    ns = _run("settings-install")
    assert "django_getpaid_auth" in ns["INSTALLED_APPS"]
    assert set(ns["GETPAID_AUTH"]) <= set(DEFAULTS)
    assert _package_errors(GETPAID_AUTH=ns["GETPAID_AUTH"]) == []


@checks_example("create-credential")
@pytest.mark.django_db
def test_example_create_credential():
    _run("create-credential")
    credential = ClientCredential.objects.get(tenant__slug="acme")
    assert (credential.environment, credential.client_id, credential.scopes) == (
        "sandbox",
        "YOUR_CLIENT_ID",
        "payments:read",
    )
    assert credential.client_secret == "YOUR_CLIENT_SECRET"
    stored = ClientCredential.objects.values_list("client_secret", flat=True).get()
    assert "YOUR_CLIENT_SECRET" not in str(stored)  # "encrypted when saved"


@checks_example("environments-default")
def test_example_environments_default():
    assert ast.literal_eval(RUNNABLE["environments-default"]["code"]) == DEFAULTS["ENVIRONMENTS"]


@checks_example("tenant-model-settings")
def test_example_tenant_model_settings(settings):
    ns = _run("tenant-model-settings")
    assert set(ns["GETPAID_AUTH"]) <= set(DEFAULTS)
    _app_label, model = ns["GETPAID_AUTH_TENANT_MODEL"].split(".")
    # The test app has the example's model and key field under its own app label.
    assert (
        _package_errors(
            GETPAID_AUTH_TENANT_MODEL=f"testapp.{model}",
            GETPAID_AUTH={
                **settings.GETPAID_AUTH,
                "TENANT_KEY_FIELD": ns["GETPAID_AUTH"]["TENANT_KEY_FIELD"],
            },
        )
        == []
    )


@checks_example("payments-view")
@pytest.mark.django_db
def test_example_payments_view(acme, fake_getpaid_settings):
    view = _run("payments-view")["payments"]
    request = RequestFactory().get("/payments")
    request.user = SimpleNamespace(tenant=acme)
    response = view(request)
    assert response.status_code == 200
    assert len(__import__("json").loads(response.content)["data"]) == 3

    # A tenant without a credential: the GetpaidAuthError branch answers 502.
    request.user = SimpleNamespace(tenant=Tenant.objects.create(slug="empty", name="Empty"))
    assert view(request).status_code == 502


@checks_example("get-token")
@pytest.mark.django_db
def test_example_get_token(acme, fake_getpaid_settings):
    from django_getpaid_auth import AccessToken

    ns = _run("get-token", {"tenant": acme})
    assert isinstance(ns["token"], AccessToken)
    # The first call and force_refresh=True each request a token.
    assert fake_getpaid_settings.token_request_count("acme-client") == 2


@checks_example("bearer-auth")
@pytest.mark.django_db
def test_example_bearer_auth(acme, fake_getpaid_settings, monkeypatch):
    code = RUNNABLE["bearer-auth"]["code"]
    default_api = DEFAULTS["ENVIRONMENTS"]["sandbox"]["API_URL"]
    assert default_api in code
    # The example calls getpaid's sandbox API: point that URL at the fake.
    monkeypatch.setitem(
        RUNNABLE["bearer-auth"],
        "code",
        code.replace(default_api, fake_getpaid_settings.api_url("sandbox")),
    )
    ns = _run("bearer-auth")
    assert ns["response"].status_code == 200
    assert ns["response"].request.headers["Authorization"].startswith("Bearer ")


@checks_example("redis-cache")
def test_example_redis_cache():
    ns = _run("redis-cache")
    config = ns["CACHES"]["default"]
    backend = import_string(config["BACKEND"])
    cache = backend(config["LOCATION"], {"OPTIONS": config["OPTIONS"]})
    assert cache._cache  # builds the client from LOCATION and OPTIONS (no connection yet)


@checks_example("fake-getpaid")
def test_example_fake_getpaid():
    ns = _run("fake-getpaid")
    assert "acme-client" in ns["fake"].clients
    assert ns["fake"].clients["acme-client"].scopes == ("payments:read",)


@checks_example("fixtures-test", "mock-token-test")
def test_example_fixtures_test_and_mock_token_test(tmp_path):
    """Both example test modules run with pytest in a fresh process (SQLite, local cache)."""
    (tmp_path / "test_fixtures_example.py").write_text(RUNNABLE["fixtures-test"]["code"])
    (tmp_path / "test_mock_token_example.py").write_text(RUNNABLE["mock-token-test"]["code"])
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout


@checks_example("signal-receiver")
@pytest.mark.django_db
@responses.activate
def test_example_signal_receiver():
    from django_getpaid_auth import get_token
    from django_getpaid_auth.exceptions import InvalidClientError
    from django_getpaid_auth.signals import token_request_failed
    from django_getpaid_auth.testing import mock_token_endpoint

    metrics = mock.Mock()
    ns = _run("signal-receiver", {"metrics": metrics})
    try:
        tenant = Tenant.objects.create(slug="acme", name="Acme")
        ClientCredential.objects.create(tenant=tenant, client_id="acme-client", client_secret="s")
        mock_token_endpoint(responses, status=401)
        with pytest.raises(InvalidClientError):
            get_token(tenant)
    finally:
        token_request_failed.disconnect(ns["report_token_failure"])
    metrics.increment.assert_called_once_with(
        "getpaid.token_failed", tags={"error": "InvalidClientError"}
    )


@checks_example("request-tenant-resolver")
@pytest.mark.django_db
def test_example_request_tenant_resolver(acme, fake_getpaid_settings, settings, monkeypatch):
    from django_getpaid_auth import get_session, get_token
    from django_getpaid_auth.exceptions import NoCurrentTenantError

    ns = _run("request-tenant-resolver")
    module = type(sys)(ns["__name__"])  # importable, as myproject.tenancy would be
    module.__dict__.update(ns)
    monkeypatch.setitem(sys.modules, ns["__name__"], module)
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "TENANT_RESOLVER": f"{ns['__name__']}.current_tenant",
    }

    def view(request):  # calls getpaid without naming the tenant
        return get_session().post(
            "/v2/payments/query", json={}, headers={"Getpaid-Idempotency-Key": "docs-resolver"}
        )

    request = RequestFactory().get("/payments")
    request.organization = acme
    response = ns["CurrentTenantMiddleware"](view)(request)
    assert response.status_code == 200
    assert fake_getpaid_settings.token_request_count("acme-client") == 1
    # After the request there is no current tenant: a typed error, not the last tenant.
    with pytest.raises(NoCurrentTenantError):
        get_token()
    # Nor in a request without an organization.
    with pytest.raises(NoCurrentTenantError):
        ns["CurrentTenantMiddleware"](view)(RequestFactory().get("/payments"))


@checks_example("pay-order-view")
@pytest.mark.django_db
def test_example_pay_order_view(fake_getpaid_settings):
    import json
    import uuid

    fake = fake_getpaid_settings
    fake.register_client("shop-client", "shop-secret", scopes="payments:read_write")
    tenant = Tenant.objects.create(slug="shop", name="Shop")
    ClientCredential.objects.create(
        tenant=tenant,
        environment="sandbox",
        client_id="shop-client",
        client_secret="shop-secret",
        scopes="payments:read_write",
    )
    ns = _run("pay-order-view")
    body = {
        "reference": "ORD-42",
        "amount": 1000,
        "currency": "EUR",
        "splits": {"type": "per_transaction", "accounts": [{"type": "seller", "id": "acc_1"}]},
        "standing_instruction": {"id": "sti_1"},
    }
    order = SimpleNamespace(pk=42, payment_request=lambda: body)
    request = RequestFactory().post("/orders/42/pay")
    request.user = SimpleNamespace(tenant=tenant)

    # A double click: two calls, one payment, one key derived from the order.
    first, second = ns["pay_order"](request, order), ns["pay_order"](request, order)
    assert first.status_code == second.status_code == 201
    assert json.loads(first.content)["id"] == json.loads(second.content)["id"]
    key = str(uuid.uuid5(ns["PAYMENT_KEYS"], "order-42-pay"))
    assert fake.idempotency_keys("shop-client") == [key, key]
    assert len(fake.payments("shop-client")) == 4

    # The connection drops after getpaid created the payment: the retry gets it.
    other = SimpleNamespace(pk=43, payment_request=lambda: {**body, "reference": "ORD-43"})
    fake.fail_next_api_requests("commit_then_reset")
    assert ns["pay_order"](request, other).status_code == 201
    assert len(fake.payments("shop-client")) == 5

    # An invalid order: 400 with getpaid's field errors, sent once.
    fake.reset_counters()
    broken = SimpleNamespace(pk=44, payment_request=lambda: {"reference": "ORD-44"})
    response = ns["pay_order"](request, broken)
    assert response.status_code == 400
    assert json.loads(response.content)["errors"]["amount"] == ["required"]
    assert fake.api_request_count() == 1

    # getpaid keeps failing: 502 with the trace id of the last answer.
    fake.fail_next_api_requests("500", count=3)
    response = ns["pay_order"](request, SimpleNamespace(pk=45, payment_request=lambda: body))
    assert response.status_code == 502
    assert json.loads(response.content)["trace_id"] == fake.api_requests[-1]["trace_id"]


@checks_example("async-payments-view")
@pytest.mark.django_db
def test_example_async_payments_view(acme, fake_getpaid_settings):
    import json

    from asgiref.sync import async_to_sync

    from django_getpaid_auth import get_token

    view = _run("async-payments-view")["payments"]
    request = RequestFactory().get("/payments")
    request.tenant = acme
    # async_to_sync, as Django runs an async view under WSGI: the ORM call of the first
    # (cold) call comes back to this thread, which holds the test's transaction.
    response = async_to_sync(view)(request)
    assert response.status_code == 200
    assert len(json.loads(response.content)["data"]) == 3
    assert async_to_sync(view)(request).status_code == 200  # warm: the same token
    # The sync path uses the token the async view got: still one token request.
    assert get_token(acme).fingerprint
    assert fake_getpaid_settings.token_request_count("acme-client") == 1

    # A tenant without a credential: the GetpaidAuthError branch answers 502.
    request.tenant = Tenant.objects.create(slug="empty", name="Empty")
    assert async_to_sync(view)(request).status_code == 502

    # getpaid unreachable (after the retries): httpx's own error, answered 502.
    request.tenant = acme
    fake_getpaid_settings.fail_next_api_requests("reset", count=3)
    response = async_to_sync(view)(request)
    assert response.status_code == 502
    assert json.loads(response.content)["error"].endswith("Error")


def test_fault_table_lists_every_fault_kind():
    from django_getpaid_auth.testing import FAULT_KINDS

    text = (ROOT / "docs" / "testing.rst").read_text()
    assert re.findall(r'^``"(\w+)"``', text, flags=re.MULTILINE) == list(FAULT_KINDS)
