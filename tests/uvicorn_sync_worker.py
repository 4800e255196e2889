"""A sync (WSGI-style) process for tests/test_uvicorn.py: get_token + get_session in a loop.

Run with the example project's settings (the test's overlay of them) on the same database
and Redis as the uvicorn workers. Protocol (stdin/stdout, one line each): the worker
resolves its tenant's credential, prints READY, waits for "GO <until epoch>" on stdin, then
until that moment calls ``get_token(tenant)`` and sends one API request with
``get_session(tenant)`` every PAUSE seconds; it prints one JSON line (calls, errors,
fingerprints in the order first seen, latencies of each call) and exits.
"""

from __future__ import annotations

import json
import sys
import time

PAUSE = 0.02


def main() -> None:
    import django

    django.setup()
    from django_getpaid_auth import get_session, get_token, token_store
    from django_getpaid_auth.models import Tenant

    tenant = Tenant.objects.get(slug=sys.argv[1])
    get_session(tenant)  # resolves the credential (SQL once, no token request)
    print("READY", flush=True)
    until = float(sys.stdin.readline().split()[1])
    calls, errors, fingerprints, latencies = 0, [], [], []
    while time.time() < until:
        started = time.monotonic()
        try:
            token = get_token(tenant)
            response = get_session(tenant).post(
                "/v2/payments/query", json={"type": "payments", "first": 1}
            )
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}")
            elif token.fingerprint not in fingerprints:
                fingerprints.append(token.fingerprint)
        except Exception as exc:  # reported to the test, which asserts on it
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.monotonic() - started)
        calls += 1
        time.sleep(PAUSE)
    token_store.wait_for_background_refreshes()  # a refresh started here must land
    print(
        json.dumps(
            {
                "calls": calls,
                "errors": errors,
                "fingerprints": fingerprints,
                "latencies": latencies,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
