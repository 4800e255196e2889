"""Schema-per-tenant projects: django-tenants on real PostgreSQL and real Redis.

The project in tests/tenants_project is set up the way django-tenants' documentation
describes, with its recommended cache (``KEY_FUNCTION = "django_tenants.cache.make_key"``:
every key prefixed with the current thread's schema) and the credentials in the public
schema (``SHARED_APPS``). Its settings differ from the suite's, so it runs in subprocesses
(tests/tenants_worker.py, ``manage.py``) against a throwaway database created for this
run, the Redis of ``REDIS_URL`` (under a prefix of each test's own) and a fake getpaid
served from this process.

Runs where ``DATABASE_URL`` is PostgreSQL and ``REDIS_URL`` is set (the PostgreSQL + Redis
step of ``.ci/run``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings

from django_getpaid_auth.testing import FakeGetpaid

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "tests" / "tenants_project" / "manage.py"
DATABASE_URL = os.environ.get("DATABASE_URL", "")
LOCAL_CACHE_TIMEOUT = 1.0  # the default: how long a process trusts its in-memory copy

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (django_settings.REDIS_URL and DATABASE_URL.startswith(("postgres", "postgis"))),
        reason="django-tenants needs PostgreSQL: set DATABASE_URL (PostgreSQL) and REDIS_URL "
        "(the PostgreSQL + Redis step of .ci/run sets both)",
    ),
]


def _database_url(name: str) -> str:
    return urlsplit(DATABASE_URL)._replace(path=f"/{name}").geturl()


def _admin_sql(sql: str) -> None:
    """Run SQL outside any transaction in the server's ``postgres`` database."""
    import psycopg

    with psycopg.connect(_database_url("postgres").replace("postgis://", "postgresql://")) as db:
        db.autocommit = True
        db.execute(sql)


class Project:
    """The django-tenants project of this run: its database, environment and processes."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.prefix = ""
        self.getpaid: dict = {}
        self.workers: list[Worker] = []

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.tenants_project.settings",
            "PYTHONPATH": str(ROOT),
            "GPA_TENANTS_DATABASE_URL": _database_url(self.database),
            "REDIS_URL": django_settings.REDIS_URL,
            "GPA_TENANTS_CACHE_PREFIX": self.prefix,
            "GPA_TENANTS_GETPAID": json.dumps(self.getpaid),
        }
        env.pop("DATABASE_URL", None)
        return env

    def python(self, code: str) -> str:
        """Run ``code`` in a fresh process of the project (public schema); its stdout."""
        script = "import django; django.setup()\n" + textwrap.dedent(code)
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(MANAGE), *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def worker(self, schema: str) -> Worker:
        worker = Worker(self.env())
        self.workers.append(worker)
        assert worker.ask(f"SCHEMA {schema}") == {"schema": schema}
        return worker


class Worker:
    """A long-lived process of the project (tests/tenants_worker.py), driven over stdin."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "tenants_worker.py")],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout.readline().strip() == "READY"

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def read(self):
        line = self.process.stdout.readline()
        assert line, f"worker exited with {self.process.wait(5)}"
        return json.loads(line)

    def ask(self, line: str):
        self.send(line)
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(scope="module")
def tenants_project():
    """A throwaway database: the public tenant (tenants.test), tenants ``a`` and ``b``."""
    pytest.importorskip("django_tenants", reason="django-tenants is a test dependency")
    project = Project(f"gpa_tenants_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    _admin_sql(f'CREATE DATABASE "{project.database}"')
    try:
        project.python(
            """
            from django.core.management import call_command
            from tests.tenants_project.customers.models import Client, Domain

            call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
            for schema, name, domain in [
                ("public", "The project", "tenants.test"),
                ("a", "Tenant A", "a.tenants.test"),
                ("b", "Tenant B", "b.tenants.test"),
            ]:
                tenant = Client.objects.create(schema_name=schema, name=name)  # + its schema
                Domain.objects.create(domain=domain, tenant=tenant, is_primary=True)
            """
        )
        yield project
    finally:
        _admin_sql(f'DROP DATABASE IF EXISTS "{project.database}" WITH (FORCE)')


@pytest.fixture
def fake():
    with FakeGetpaid() as server:
        for client_id in ("client-a", "client-a2", "client-b"):
            server.register_client(client_id, client_id.replace("client", "secret"))
        yield server


@pytest.fixture
def project(tenants_project, fake):
    """This test's cache prefix and fake getpaid; tenant a: client-a, tenant b: client-b."""
    project = tenants_project
    project.prefix = f"gpat{uuid.uuid4().hex[:8]}"
    project.getpaid = fake.getpaid_auth_settings()
    project.python(
        """
        from django_getpaid_auth.models import ClientCredential
        from tests.tenants_project.customers.models import Client

        ClientCredential.objects.all().delete()
        for schema in ("a", "b"):
            ClientCredential.objects.create(
                tenant=Client.objects.get(schema_name=schema), environment="sandbox",
                client_id=f"client-{schema}", client_secret=f"secret-{schema}",
                scopes="payments:read",
            )
        """
    )
    yield project
    for worker in project.workers:
        worker.close()
    project.workers.clear()
    _delete_redis_keys(project.prefix)


def _delete_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(django_settings.REDIS_URL)
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


# --- a change made from the public schema -------------------------------------------------


def test_credential_change_from_public_reaches_a_worker_serving_schema_a(project, fake):
    worker = project.worker("a")
    assert worker.ask("GET a")["client_id"] == "client-a"  # warm: token and credential
    admin = project.worker("public")

    # The public site's admin (the public tenant's domain) gives tenant a a new client.
    worker.send("WATCH a 15")
    changed = admin.ask("ADMIN a client-a2 secret-a2")
    assert changed["status"] == 302, changed
    seen = worker.read()
    assert seen["before"] == {"client_id": "client-a"}
    assert seen["after"] == {"client_id": "client-a2"}, "schema a never saw the change"
    admin_delay = seen["changed_at"] - changed["committed_at"]
    assert admin_delay <= LOCAL_CACHE_TIMEOUT + 0.5

    # `manage.py shell` (public schema) deactivates it with an ORM save.
    worker.send("WATCH a 15")
    shell = project.manage(
        "shell",
        "-c",
        "import time; from django_getpaid_auth.models import ClientCredential; "
        "c = ClientCredential.objects.get(tenant__schema_name='a'); c.is_active = False; "
        "c.save(); print(time.time())",
    )
    assert shell.returncode == 0, shell.stderr[-3000:]
    committed_at = float(shell.stdout.split()[-1])
    seen = worker.read()
    assert seen["after"] == {"error": "CredentialNotFoundError"}, "schema a never saw it"
    shell_delay = seen["changed_at"] - committed_at
    assert shell_delay <= LOCAL_CACHE_TIMEOUT + 0.5
    assert fake.token_request_count("client-a2") == 1
    print(
        f"\nschema a saw the admin's change after {admin_delay:.2f}s, the shell's {shell_delay:.2f}s"
    )


# --- short tokens, two processes in schema a ------------------------------------------------

LIFETIME = 10
REFRESH_AFTER = 7  # lifetime - REFRESH_MARGIN (2) - CLOCK_SKEW (1)
USABLE_FOR = 9  # lifetime - CLOCK_SKEW (1)
RUN = 2 * LIFETIME


def test_short_tokens_two_workers_in_schema_a_one_request_per_token_nobody_waits(project, fake):
    # A token is due for refresh 7 s after it was obtained and handed out until 9 s (late
    # in its life, as for real tokens; with the default margins a 10 s token would be due
    # after 2.5 s). Each refresh is made in the background by one caller; a caller that
    # waited for a token request would take >= the fake's 0.3 s latency.
    fake.token_lifetime = LIFETIME
    fake.token_latency = 0.3
    project.getpaid = {**project.getpaid, "REFRESH_MARGIN": 2, "CLOCK_SKEW": 1}
    first, second = project.worker("a"), project.worker("a")
    warm = first.ask("GET a")  # the first token (one request), then both run 2 lifetimes
    issued = time.time()
    assert second.ask("GET a") == warm
    for worker in (first, second):
        worker.send(f"LOOP a {RUN}")
    results = [first.read(), second.read()]
    ran = time.time() - issued

    assert [r["errors"] for r in results] == [[], []]
    assert [r["slow"] for r in results] == [[], []], "callers waited for a token"
    assert min(r["calls"] for r in results) > 500
    # Token k+1 is requested no earlier than REFRESH_AFTER s after token k was obtained
    # (its refresh window opens then), and no later than USABLE_FOR s (after that nobody
    # may use token k: a caller would have waited, which the assertion above excludes).
    # So over `ran` (~20.1) s: between ceil(ran / 9) = 3 and 1 + floor(ran / 7) = 3
    # requests: one per lifetime, plus the first. `ran` starts after the first token
    # arrived and a loaded machine can start one worker's loop late, so the upper bound
    # allows one refresh more (seen once: 4 requests in 20.36 s); every request must still
    # be a token that both processes used (none wasted, none fetched twice).
    requests = fake.token_request_count("client-a")
    assert math.ceil(ran / USABLE_FOR) <= requests <= 2 + math.floor(ran / REFRESH_AFTER)
    # Both processes used the same tokens, in the same order (one may have run a little
    # longer and seen one more), and every token requested was used.
    short, long = sorted((r["fingerprints"] for r in results), key=len)
    assert long[: len(short)] == short and len(long) - len(short) <= 1
    assert len(long) == requests
    slowest = max(r["max_latency"] for r in results)
    print(
        f"\n{requests} token requests in {ran:.1f}s; slowest of {sum(r['calls'] for r in results)} calls {slowest * 1000:.0f} ms"
    )


# --- one credential, two schemas --------------------------------------------------------------


def test_one_credential_used_from_public_and_from_schema_a_is_fetched_once(project, fake):
    public, in_a = project.worker("public"), project.worker("a")
    from_public = public.ask("GET a")  # by tenant key, from the public schema
    from_a = in_a.ask("GET a")  # the same credential, from a process serving schema a
    assert from_public["client_id"] == from_a["client_id"] == "client-a"
    assert from_public["fingerprint"] == from_a["fingerprint"]
    assert public.ask("IN_CONTEXT a a") == from_a  # and inside tenant_context in public
    assert fake.token_request_count("client-a") == 1


# --- the current tenant ---------------------------------------------------------------------


def test_current_tenant_resolver_uses_the_tenant_of_the_connection(project, fake):
    worker = project.worker("public")
    # In the public schema there is no current tenant: a typed error, not a guess.
    assert worker.ask("GET -") == {"error": "NoCurrentTenantError"}
    assert worker.ask("SESSION -") == {"error": "NoCurrentTenantError"}
    # Inside tenant_context, the tenant of that context.
    assert worker.ask("IN_CONTEXT a -")["client_id"] == "client-a"
    assert worker.ask("IN_CONTEXT b -")["client_id"] == "client-b"
    assert worker.ask("IN_CONTEXT public -") == {"error": "NoCurrentTenantError"}
    # A process serving schema b (connection.set_tenant), then a's site through
    # TenantMainMiddleware: the view calls get_session() without a tenant.
    assert worker.ask("SCHEMA b") == {"schema": "b"}
    assert worker.ask("SESSION -") == {"status": 200}
    page = worker.ask("PAGE a.tenants.test /payments/")
    assert page["status"] == 200, page
    assert json.loads(page["body"]) == {"schema": "a", "status": 200}
    assert [r["client_id"] for r in fake.api_requests] == ["client-b", "client-a"]


# --- management commands from the public schema -----------------------------------------------


def test_getpaid_check_and_rotate_keys_from_the_public_schema(project, fake):
    check = project.manage("getpaid_check", "--json")
    assert check.returncode == 0, check.stderr[-3000:]
    report = json.loads(check.stdout)
    assert (report["ok"], report["checked"], report["passed"]) == (True, 2, 2)
    assert sorted(r["tenant_key"] for r in report["results"]) == ["a", "b"]
    assert fake.token_request_count() == 2

    # The check's tokens are in the cache that the tenants' processes read.
    assert project.worker("a").ask("GET a")["client_id"] == "client-a"
    assert fake.token_request_count("client-a") == 1
    assert project.worker("b").ask("GET -")["client_id"] == "client-b"  # resolver, schema b
    assert fake.token_request_count() == 2

    plain = project.manage("getpaid_check")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "2 checked, 2 ok, 0 failed" in plain.stdout, plain.stdout

    rotate = project.manage("getpaid_rotate_keys", "--dry-run")
    assert rotate.returncode == 0, rotate.stderr[-3000:]
    assert "2 credential secret(s) would be re-encrypted." in rotate.stdout, rotate.stdout
