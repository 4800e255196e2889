"""Many workers, one token: processes sharing Redis make one token request per lifetime.

These tests run only with REDIS_URL set (``.ci/run`` sets it). Each spawns real worker
processes (tests/mp_worker.py) against the fake getpaid server in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from django_getpaid_auth.testing import FakeGetpaid

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.redis, pytest.mark.slow]

needs_redis = pytest.mark.skipif(
    not django_settings.REDIS_URL, reason="REDIS_URL not set (CI sets it)"
)


class Cluster:
    """A file SQLite DB with one credential, a fake getpaid, and worker processes."""

    def __init__(self, tmp_path: Path, fake: FakeGetpaid, *, lease_timeout: float = 20.0) -> None:
        self.tmp_path = tmp_path
        self.fake = fake
        prefix = f"mp{os.getpid()}{int(time.time() * 1000)}"
        gp = {
            **django_settings.GETPAID_AUTH,
            **fake.getpaid_auth_settings(),
            "CACHE_KEY_PREFIX": prefix,
            "LEASE_TIMEOUT": lease_timeout,
            "WAIT_TIMEOUT": 30.0,
        }
        (tmp_path / "mp_settings.py").write_text(
            "from tests.settings import *  # noqa\n"
            + textwrap.dedent(
                f"""
                DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3",
                              "NAME": {str(tmp_path / "mp.sqlite3")!r}}}}}
                CACHES = {{"default": {{"BACKEND": "django.core.cache.backends.redis.RedisCache",
                           "LOCATION": {django_settings.REDIS_URL!r}}}}}
                GETPAID_AUTH = {gp!r}
                """
            )
        )
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "mp_settings",
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        }
        self.env.pop("DATABASE_URL", None)
        self.run_python(
            """
            from django.core.management import call_command
            call_command("migrate", verbosity=0)
            from django_getpaid_auth.models import ClientCredential, Tenant
            t = Tenant.objects.create(slug="shared", name="Shared")
            ClientCredential.objects.create(tenant=t, environment="sandbox",
                client_id="mp-client", client_secret="mp-secret", scopes="payments:read")
            """
        )
        fake.register_client("mp-client", "mp-secret")

    def run_python(self, code: str) -> None:
        script = "import django; django.setup()\n" + textwrap.dedent(code)
        subprocess.run(
            [sys.executable, "-c", script], env=self.env, check=True, cwd=ROOT, timeout=120
        )

    def start_workers(self, processes: int, threads: int) -> list[subprocess.Popen]:
        workers = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "mp_worker.py"), "shared", str(threads)],
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        for w in workers:
            assert w.stdout.readline().strip() == "READY"
        return workers

    @staticmethod
    def go(workers: list[subprocess.Popen], delay: float = 0.3) -> None:
        go_at = time.time() + delay
        for w in workers:
            w.stdin.write(f"GO {go_at}\n")
            w.stdin.flush()

    @staticmethod
    def collect(workers: list[subprocess.Popen], timeout: float = 60) -> list[dict]:
        results = []
        for w in workers:
            out, _ = w.communicate(timeout=timeout)
            assert w.returncode == 0
            results.extend(json.loads(out.strip().splitlines()[-1]))
        return results

    def race(self, processes: int = 4, threads: int = 16) -> list[dict]:
        workers = self.start_workers(processes, threads)
        self.go(workers)
        return self.collect(workers)


@pytest.fixture
def fake():
    with FakeGetpaid(token_latency=0.3) as server:
        yield server


@needs_redis
def test_4_processes_x_16_threads_make_one_token_request(tmp_path, fake):
    cluster = Cluster(tmp_path, fake)
    results = cluster.race(4, 16)
    assert [r for r in results if "error" in r] == []
    assert len(results) == 64
    assert fake.token_request_count("mp-client") == 1
    assert len({r["fingerprint"] for r in results}) == 1
    print(
        f"\n64 callers in 4 processes: 1 token request; slowest call {max(r['latency'] for r in results):.3f}s"
    )


@needs_redis
def test_near_expiry_one_refresh_and_nobody_waits(tmp_path, fake):
    # lifetime 20 s: margin min(60, 20/2) = 10 s, skew min(10, 20/4) = 5 s, so the refresh
    # window runs from 5 s to 15 s after issue
    fake.token_lifetime = 20
    fake.token_latency = 1.0  # a caller that waited for the refresh took >= 1 s
    cluster = Cluster(tmp_path, fake)
    first = cluster.race(4, 16)
    issued = time.time()
    assert fake.token_request_count("mp-client") == 1
    workers = cluster.start_workers(4, 16)  # started (and warm) before the window opens
    time.sleep(max(0.0, issued + 5.5 - time.time()))
    cluster.go(workers)
    second = cluster.collect(workers)
    assert time.time() - issued < 15, "too slow a machine: the token really expired"
    assert [r for r in second if "error" in r] == []
    assert fake.token_request_count("mp-client") == 2  # exactly one refresh
    old = {r["fingerprint"] for r in first}
    waited = [r for r in second if r["latency"] >= 0.9]
    # the refresh runs in the background: nobody paid the 1 s token request (a call can
    # take a few hundred ms when 64 threads start at once on 2 cores: hence 0.9 s)
    assert waited == []
    assert all(r["fingerprint"] in old for r in second)


@needs_redis
def test_lease_holder_killed_mid_fetch_another_takes_over(tmp_path, fake):
    cluster = Cluster(tmp_path, fake, lease_timeout=2.0)
    fake.token_latency = 5.0  # the first fetch hangs...
    victim = cluster.start_workers(1, 1)
    cluster.go(victim, delay=0.0)
    deadline = time.time() + 10
    while fake.token_requests_received("mp-client") < 1 and time.time() < deadline:
        time.sleep(0.02)
    assert fake.token_requests_received("mp-client") == 1  # victim holds the lease, mid-fetch
    others = cluster.start_workers(3, 4)
    cluster.go(others, delay=0.0)
    time.sleep(0.2)
    victim[0].send_signal(signal.SIGKILL)  # ...and its process dies holding the lease
    victim[0].wait(5)
    fake.token_latency = 0.3
    started = time.monotonic()
    results = cluster.collect(others, timeout=30)
    elapsed = time.monotonic() - started
    assert [r for r in results if "error" in r] == []
    assert len({r["fingerprint"] for r in results}) == 1
    assert fake.token_requests_received("mp-client") == 2  # the dead one + one takeover
    assert elapsed < 2.0 + 0.3 + 2.0  # lease expiry + fetch + polling slack: no hang
    print(f"\nlease holder killed: takeover served 12 callers after {elapsed:.2f}s")


# --- Redis outage -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A redis-server of this test's own on a spare port, stoppable and restartable."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def stored_keys(self) -> list[str]:
        import redis

        return [k.decode() for k in redis.Redis(port=self.port).keys("*")]


@pytest.fixture
def own_redis(tmp_path):
    import shutil

    if not shutil.which("redis-server"):
        if os.environ.get("CI"):
            pytest.fail("redis-server is required for the Redis outage test")
        pytest.skip("redis-server not installed")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.django_db
def test_redis_outage_degrades_then_sharing_resumes(own_redis, settings, caplog, monkeypatch):
    from django_getpaid_auth import cache_backend, get_session, get_token
    from tests.factories import make_credential, make_tenant

    with FakeGetpaid() as fake:
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{own_redis.port}/0",
                "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
            }
        }
        settings.GETPAID_AUTH = {
            **settings.GETPAID_AUTH,
            **fake.getpaid_auth_settings(),
            "LOCAL_CACHE_TIMEOUT": 0,  # every call goes to the (failing) shared cache
        }
        monkeypatch.setattr(cache_backend, "RETRY_SHARED_AFTER", 0.2)
        tenant = make_tenant(slug="outage")
        make_credential(tenant, client_id="o-client", client_secret="o-secret")
        fake.register_client("o-client", "o-secret")

        assert (
            get_session(tenant)
            .post(
                "/v2/payments/query", json={}, headers={"Getpaid-Idempotency-Key": "outage-key-1"}
            )
            .status_code
            == 200
        )
        assert any(":token:" in k for k in own_redis.stored_keys())
        assert fake.token_request_count() == 1

        own_redis.stop()
        caplog.clear()
        for i in range(5):  # Redis is down: calls keep succeeding
            response = get_session(tenant).post(
                "/v2/payments/query",
                json={},
                headers={"Getpaid-Idempotency-Key": f"outage-key-down-{i}"},
            )
            assert response.status_code == 200
        assert "fetching getpaid tokens per process" in caplog.text
        assert fake.token_request_count() == 2  # one per-process fetch, then cached locally

        own_redis.start()  # empty: the shared token is gone
        time.sleep(0.3)
        token = get_token(tenant)
        assert any(":token:" in k for k in own_redis.stored_keys())  # sharing resumed
        assert get_token(tenant) == token
        assert not cache_backend.is_degraded()
