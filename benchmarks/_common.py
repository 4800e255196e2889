"""Shared set-up for the benchmarks: Django settings, the fake server process, the clients.

Every benchmark measures ours and its baseline in the same run, on the same server.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
KEY = "0Cq5VUJ4SeI4ezhfL8jkchyFMjCs6LvzKRjM8U_cZ0o="  # benchmark-only key
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
LIBRARIES = ("floor", "ours", "authlib", "requests-oauthlib", "requests-auth")


class FakeServer:
    """FakeGetpaid in a child process, so its work does not share our GIL."""

    def __init__(self, *, latency: float = 0.0, lifetime: int = 3600, clients: int = 1) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("fake_server.py")),
                str(latency),
                str(lifetime),
                str(clients),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def command(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def token_requests(self) -> int:
        return int(self.command("count"))

    def close(self) -> None:
        self.command("quit") if self.proc.poll() is None else None
        self.proc.wait(10)


def configure_django(
    *,
    cache: str,
    server: FakeServer,
    db_path: str | None = None,
    extra: dict[str, Any] | None = None,
    prefix: str | None = None,
) -> None:
    """settings.configure() for a benchmark process (sqlite file DB, LocMem or Redis)."""
    import django
    from django.conf import settings

    db_path = db_path or os.path.join(tempfile.mkdtemp(), "bench.sqlite3")
    # Processes of one run share this prefix (and so their tokens); runs do not.
    prefix = prefix or f"bench{os.getpid()}-{time.time():.0f}"
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            # LocMem keeps 300 entries by default: far fewer than 10,000 tenants' tokens.
            "OPTIONS": {"MAX_ENTRIES": 1_000_000},
        }
    }
    if cache == "redis":
        caches = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": REDIS_URL,
                "KEY_PREFIX": prefix,
            }
        }
    info = server.info
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        USE_TZ=True,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="benchmarks.urls",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django_getpaid_auth",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": db_path,
                "OPTIONS": {"timeout": 30},
            }
        },
        CACHES=caches,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        GETPAID_AUTH={
            "ENCRYPTION_KEYS": [KEY],
            "CACHE_KEY_PREFIX": prefix,
            "TOKEN_URL": info["token_url"],
            "ENVIRONMENTS": {
                "sandbox": {
                    "AUDIENCE": "https://api.sandbox.getpaid.io",
                    "API_URL": info["api_url"],
                }
            },
            **(extra or {}),
        },
    )
    django.setup()


def create_tenants(count: int) -> None:
    """Tenants bench-0.. with sandbox credentials matching the fake's clients."""
    from django.core.management import call_command

    from django_getpaid_auth import crypto
    from django_getpaid_auth.fields import Ciphertext
    from django_getpaid_auth.models import ClientCredential, Tenant

    call_command("migrate", verbosity=0)
    if Tenant.objects.exists():
        return
    Tenant.objects.bulk_create(Tenant(slug=f"bench-{i}", name=f"Bench {i}") for i in range(count))
    tenants = dict(Tenant.objects.values_list("slug", "pk"))
    ClientCredential.objects.bulk_create(
        (
            ClientCredential(
                tenant_id=tenants[f"bench-{i}"],
                environment="sandbox",
                client_id=f"bench-{i}",
                client_secret=Ciphertext(crypto.encrypt(f"secret-{i}")),
                secret_version=f"v{i}",
                scopes="payments:read",
            )
            for i in range(count)
        ),
        batch_size=1000,
    )


def make_getter(
    library: str, server: FakeServer, index: int = 0, leeway: float = 1.0
) -> Callable[[], int]:
    """A zero-argument callable doing one authenticated GET the way `library` would."""
    info = server.info
    client_id, secret = f"bench-{index}", f"secret-{index}"
    url = info["api_url"] + "/v2/ping"
    if library == "floor":  # hand-written: one token, one kept-alive Session
        token = requests.post(
            info["token_url"],
            json={
                "client_id": client_id,
                "client_secret": secret,
                "grant_type": "client_credentials",
                "audience": "https://api.sandbox.getpaid.io",
            },
            timeout=10,
        ).json()["access_token"]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        return lambda: session.get(url, timeout=(5, 30)).status_code
    if library == "ours":
        from django_getpaid_auth import get_session

        tenant = f"bench-{index}"
        return lambda: get_session(tenant).get("/v2/ping").status_code
    if library == "authlib":
        from authlib.integrations.requests_client import OAuth2Session

        session = OAuth2Session(
            client_id,
            secret,
            token_endpoint=info["token_url"],
            grant_type="client_credentials",
            leeway=int(leeway),
        )
        session.fetch_token()
        return lambda: session.get(url, timeout=(5, 30)).status_code
    if library == "requests-oauthlib":
        from oauthlib.oauth2 import BackendApplicationClient, TokenExpiredError
        from requests_oauthlib import OAuth2Session as OAuthlibSession

        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # the local fake speaks plain http

        session = OAuthlibSession(client=BackendApplicationClient(client_id=client_id))

        def fetch() -> None:
            session.fetch_token(info["token_url"], client_id=client_id, client_secret=secret)

        fetch()

        def get() -> int:
            try:
                return session.get(url, timeout=(5, 30)).status_code
            except TokenExpiredError:  # no refresh token in client_credentials: fetch anew
                fetch()
                return session.get(url, timeout=(5, 30)).status_code

        return get
    if library == "requests-auth":
        from requests_auth import OAuth2ClientCredentials

        auth = OAuth2ClientCredentials(info["token_url"], client_id, secret, early_expiry=leeway)
        session = requests.Session()
        return lambda: session.get(url, auth=auth, timeout=(5, 30)).status_code
    raise ValueError(library)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    import platform

    return (
        f"{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
        f"{platform.platform()}"
    )
