"""A long-lived process of the django-tenants test project, for tests/test_django_tenants.py.

Runs with ``DJANGO_SETTINGS_MODULE=tests.tenants_project.settings``. Reads one command per
line on stdin and answers each with one JSON line. ``<key>`` is a tenant key (a schema
name) or ``-`` for "no tenant given" (the resolver picks the current one).

``SCHEMA <schema>``           serve this schema from now on, as TenantMainMiddleware
                              does for a request (``public`` for the public schema)
``GET <key>``                 get_token: {"client_id", "fingerprint"} or {"error": class}
``IN_CONTEXT <schema> <key>`` GET inside ``tenant_context`` of that tenant
``SESSION <key>``             get_session().post(...) to the fake API: {"status"} or error
``WATCH <key> <seconds>``     GET in a loop until the client id (or error) changes:
                              {"before", "after", "changed_at"} (epoch; None: no change)
``LOOP <key> <seconds>``      get_token in a loop: call count, latencies, fingerprints
``ADMIN <schema> <client_id> <secret>``  the public site's admin changes that tenant's
                              credential (django.test.Client, logged in as a superuser)
``PAGE <host> <path>``        django.test.Client GET: {"status", "body"}
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any


def main() -> None:
    import django

    django.setup()
    from django.db import connection
    from django_tenants.utils import get_tenant_model, schema_context, tenant_context

    from django_getpaid_auth import get_session, get_token, service
    from django_getpaid_auth.testing import decode_jwt

    def tenant_ref(key: str) -> str | None:
        return None if key == "-" else key

    def outcome(key: str) -> dict[str, Any]:
        try:
            token = get_token(tenant_ref(key))
        except Exception as exc:  # reported to the parent, which asserts on it
            return {"error": type(exc).__name__}
        return {"client_id": decode_jwt(token.value)[1]["azp"], "fingerprint": token.fingerprint}

    def in_schema(schema: str):
        if schema == "public":
            return schema_context("public")
        return tenant_context(get_tenant_model().objects.get(schema_name=schema))

    def watch(key: str, seconds: float) -> dict[str, Any]:
        def used() -> dict[str, Any]:
            found = outcome(key)
            found.pop("fingerprint", None)
            return found

        before, end = used(), time.monotonic() + seconds
        while time.monotonic() < end:
            now = used()
            if now != before:
                return {"before": before, "after": now, "changed_at": time.time()}
            time.sleep(0.01)
        return {"before": before, "after": None, "changed_at": None}

    def loop(key: str, seconds: float) -> dict[str, Any]:
        latencies: list[float] = []
        slow: list[list[float]] = []
        fingerprints: list[str] = []
        errors: list[str] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                token = get_token(tenant_ref(key))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latency = time.monotonic() - started
            latencies.append(latency)
            if latency >= 0.25:
                slow.append([round(time.time(), 3), round(latency, 3)])
            if not fingerprints or fingerprints[-1] != token.fingerprint:
                fingerprints.append(token.fingerprint)
            time.sleep(0.005)
        service.wait_for_background_refreshes()  # a refresh started here must land
        return {
            "calls": len(latencies),
            "max_latency": max(latencies, default=0.0),
            "slow": slow,
            "fingerprints": fingerprints,
            "errors": errors[:5],
        }

    def admin_change(schema: str, client_id: str, secret: str) -> dict[str, Any]:
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.test import Client
        from django.urls import reverse

        from django_getpaid_auth.models import ClientCredential

        with schema_context("public"):
            user = get_user_model().objects.get_or_create(
                username="root", defaults={"is_staff": True, "is_superuser": True}
            )[0]
            credential = ClientCredential.objects.get(tenant__schema_name=schema)
            browser = Client(HTTP_HOST="tenants.test")  # the public tenant's domain
            browser.force_login(user)
            url = reverse(  # the public site's URLconf (django-tenants' PUBLIC_SCHEMA_URLCONF)
                "admin:django_getpaid_auth_clientcredential_change",
                args=[credential.pk],
                urlconf=settings.PUBLIC_SCHEMA_URLCONF,
            )
            response = browser.post(
                url,
                {
                    "tenant": credential.tenant_id,
                    "environment": credential.environment,
                    "client_id": client_id,
                    "new_client_secret": secret,
                    "known_scopes": ["payments:read"],
                    "other_scopes": "",
                    "is_active": "on",
                },
            )
        return {"status": response.status_code, "committed_at": time.time()}

    def page(host: str, path: str) -> dict[str, Any]:
        from django.test import Client

        response = Client(HTTP_HOST=host).get(path)
        return {"status": response.status_code, "body": response.content.decode()[:2000]}

    def run(command: str, *args: str) -> Any:
        if command == "SCHEMA":
            if args[0] == "public":
                connection.set_schema_to_public()
            else:
                connection.set_tenant(get_tenant_model().objects.get(schema_name=args[0]))
            return {"schema": connection.schema_name}
        if command == "GET":
            return outcome(args[0])
        if command == "IN_CONTEXT":
            with in_schema(args[0]):
                return outcome(args[1])
        if command == "SESSION":
            try:
                response = get_session(tenant_ref(args[0])).post(
                    "/v2/payments/query",
                    json={},
                    headers={"Getpaid-Idempotency-Key": "tenants-worker"},
                )
            except Exception as exc:
                return {"error": type(exc).__name__}
            return {"status": response.status_code}
        if command == "WATCH":
            return watch(args[0], float(args[1]))
        if command == "LOOP":
            return loop(args[0], float(args[1]))
        if command == "ADMIN":
            return admin_change(*args)
        if command == "PAGE":
            return page(*args)
        return {"crash": f"unknown command {command!r}"}

    print("READY", flush=True)
    for line in sys.stdin:
        try:
            answer = run(*line.split())
        except Exception:  # the parent shows it in the failing assertion
            answer = {"crash": traceback.format_exc()[-3000:]}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
