"""Without httpx (an optional extra) the package imports, the sync API works, and the
async names raise GetpaidAuthConfigurationError naming the extra."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.modules["httpx"] = None  # blocked: "import httpx" raises ImportError
    import django
    django.setup()
    import django_getpaid_auth as gpa
    from django_getpaid_auth.exceptions import GetpaidAuthConfigurationError
    assert callable(gpa.get_session) and callable(gpa.get_token)
    import django_getpaid_auth.aservice  # importable: checks at call time
    for name, call in [
        ("aget_token", lambda: asyncio.run(gpa.aget_token("acme"))),
        ("ainvalidate_token", lambda: asyncio.run(gpa.ainvalidate_token("acme"))),
        ("aget_session", lambda: asyncio.run(gpa.aget_session("acme"))),
        ("GetpaidAuth", lambda: gpa.GetpaidAuth("acme")),
        ("GetpaidAsyncClient", lambda: gpa.GetpaidAsyncClient()),
    ]:
        try:
            call()
        except GetpaidAuthConfigurationError as exc:
            assert 'pip install "django-getpaid-auth[httpx]"' in str(exc), (name, str(exc))
        else:
            raise SystemExit(f"{name} did not raise")
    assert "httpx" not in [m for m in sys.modules if sys.modules[m] is not None]
    print("OK")
    """
)


def test_async_api_without_httpx_names_the_extra():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OK")
