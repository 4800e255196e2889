"""Changes reach a running worker process, on PostgreSQL + Redis (``.ci/run`` sets them).

Each test starts a real worker process (tests/consistency_worker.py) that shares the test
database and Redis with this process, warms it, changes something here the way a user
would (the admin change view, ORM saves), and asks the worker what it now uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models.signals import post_save
from django.urls import reverse

from django_getpaid_auth import cache_backend, credentials
from django_getpaid_auth.models import ClientCredential, Tenant
from django_getpaid_auth.testing import FakeGetpaid

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (django_settings.REDIS_URL and "postgres" in os.environ.get("DATABASE_URL", "")),
        reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL (CI sets both)",
    ),
]


class Worker:
    def __init__(self, tmp_path: Path, fake: FakeGetpaid) -> None:
        gp = {**django_settings.GETPAID_AUTH, **fake.getpaid_auth_settings()}
        db = {**connection.settings_dict}  # the test database pytest-django created
        (tmp_path / "worker_settings.py").write_text(
            "from tests.settings import *  # noqa\n"
            + textwrap.dedent(
                f"""
                DATABASES = {{"default": {{"ENGINE": {db["ENGINE"]!r}, "NAME": {db["NAME"]!r},
                    "USER": {db["USER"]!r}, "HOST": {db["HOST"]!r}, "PORT": {db["PORT"]!r},
                    "PASSWORD": {db["PASSWORD"]!r}}}}}
                GETPAID_AUTH = {gp!r}
                """
            )
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "worker_settings",
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        }
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "consistency_worker.py")],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout.readline().strip() == "READY"

    def ask(self, line: str):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)


@pytest.fixture
def fake():
    with FakeGetpaid() as server:
        server.register_client("client-of-a", "secret-a")
        server.register_client("client-of-b", "secret-b")
        yield server


@pytest.fixture
def worker(tmp_path, fake, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, **fake.getpaid_auth_settings()}
    w = Worker(tmp_path, fake)
    yield w
    w.close()


def make(slug: str, client_id: str, secret: str) -> ClientCredential:
    tenant = Tenant.objects.create(slug=slug, name=slug.title())
    return ClientCredential.objects.create(
        tenant=tenant, environment="sandbox", client_id=client_id, client_secret=secret,
        scopes="payments:read",
    )  # fmt: skip


def test_deactivation_in_the_admin_reaches_a_worker_that_reloads_before_the_commit(worker, client):
    """The worker polls while the admin's transaction is still open (the review's race)."""
    credential = make("acme", "client-of-a", "secret-a")
    assert worker.ask("GET acme") == {"client_id": "client-of-a"}
    user = get_user_model().objects.create_superuser("root", "root@example.com", None)
    client.force_login(user)

    def slow_commit(sender, instance, **kwargs):
        time.sleep(2.0)  # the admin's transaction stays open after the save signal

    polled: list = []
    poller = threading.Thread(target=lambda: polled.append(worker.ask("POLL acme 3.5")))
    post_save.connect(slow_commit, sender=ClientCredential, dispatch_uid="slow-commit")
    try:
        poller.start()
        response = client.post(
            reverse("admin:django_getpaid_auth_clientcredential_change", args=[credential.pk]),
            {
                "tenant": credential.tenant_id,
                "environment": "sandbox",
                "client_id": "client-of-a",
                "new_client_secret": "",
                "known_scopes": ["payments:read"],
                "other_scopes": "",
            },  # fmt: skip  (is_active unticked: deactivate)
        )
        assert response.status_code == 302, response.content[:2000]
    finally:
        post_save.disconnect(sender=ClientCredential, dispatch_uid="slow-commit")
        poller.join(10)
    assert not ClientCredential.objects.get(pk=credential.pk).is_active
    assert '{"client_id": "client-of-a"}' in polled[0]  # it did reload during the window
    time.sleep(1.5)  # LOCAL_CACHE_TIMEOUT
    assert worker.ask("GET acme") == {"error": "CredentialNotFoundError"}


def test_tenant_key_handed_over_reaches_a_running_worker(worker):
    a = make("acme", "client-of-a", "secret-a")
    make("bravo", "client-of-b", "secret-b")
    assert worker.ask("GET acme") == {"client_id": "client-of-a"}
    tenant_a = a.tenant
    tenant_a.slug = "acme-old"
    tenant_a.save()
    tenant_b = Tenant.objects.get(slug="bravo")
    tenant_b.slug = "acme"
    tenant_b.save()
    time.sleep(1.5)  # LOCAL_CACHE_TIMEOUT
    assert worker.ask("GET acme") == {"client_id": "client-of-b"}


def test_change_after_the_cache_lost_the_generation_reaches_a_running_worker(worker):
    credential = make("acme", "client-of-a", "secret-a")
    assert worker.ask("GET acme") == {"client_id": "client-of-a"}
    cache_backend.shared().delete(credentials.generation_key())  # Redis restarted empty
    credential.client_id = "client-of-b"
    credential.client_secret = "secret-b"
    credential.save()
    time.sleep(1.5)
    assert worker.ask("GET acme") == {"client_id": "client-of-b"}
