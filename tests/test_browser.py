"""The credentials admin in a real browser (headless Debian Chromium, never downloaded).

Skipped when Playwright or /usr/bin/chromium is missing, unless GETPAID_REQUIRE_BROWSER
is set (CI): then a missing browser fails the test. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from django_getpaid_auth import credentials, quota, service, token_store, usage
from django_getpaid_auth.models import mask
from django_getpaid_auth.tokens import AccessToken
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "browser-test-password"


def browser_required() -> bool:
    return os.environ.get("GETPAID_REQUIRE_BROWSER", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


def sync_playwright_or_skip():
    """Playwright's entry point, or a skip (a failure when the browser is required)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    else:
        if Path(CHROMIUM).exists():
            return sync_playwright
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if browser_required():
        pytest.fail(f"GETPAID_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


def cache_token(credential, lifetime: int) -> None:
    now = timezone.now()
    token = AccessToken(
        value=f"BROWSER-TOKEN-{credential.pk}",
        token_type="Bearer",
        expires_at=now + timedelta(seconds=lifetime),
        scopes=frozenset(credential.scope_list),
        obtained_at=now,
    )
    token_store.store(credentials.snapshot_of(credential, 0), token)


def seed_quota(credential, *, hour: int, day: int) -> None:
    """Record Auth0's figures for ``credential`` as the token store does after an answer."""
    now = time.time()
    report = quota.from_headers(
        {
            "Auth0-Client-Quota-Limit": f"b=per_hour;q=10;r={hour};t=3000,"
            f"b=per_day;q=100;r={day};t=80000",
            "x-ratelimit-limit": "30",
            "x-ratelimit-remaining": "28",
            "x-ratelimit-reset": str(int(now) + 600),
        },
        status=200,
        now=now,
    )
    assert report is not None
    usage.record_requests(service.snapshot_of(credential), [report])


def test_credentials_admin_in_chromium(transactional_db, live_server, django_user_model, canary):
    sync_playwright = sync_playwright_or_skip()
    # All ORM work happens before Playwright starts its event loop in this thread.
    django_user_model.objects.create_superuser("browser-admin", "b@example.com", PASSWORD)
    acme = make_tenant("acme", "Acme Ltd")
    sandbox = make_credential(
        acme, client_id="acme-sandbox-client-0001", client_secret=canary, scopes="payments:read"
    )
    live = make_credential(
        acme,
        environment="live",
        client_id="acme-live-client-0002",
        client_secret=canary,
        scopes="payments:read_write accounts:read",
    )
    make_credential(make_tenant("globex", "Globex"), client_id="globex-client-0003")
    cache_token(sandbox, lifetime=3600)
    cache_token(live, lifetime=900)
    seed_quota(sandbox, hour=7, day=97)
    seed_quota(live, hour=1, day=60)  # under 20 % left this hour
    ARTIFACTS.mkdir(exist_ok=True)
    changelist = f"{live_server.url}/admin/django_getpaid_auth/clientcredential/"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 900})
            page.goto(
                f"{live_server.url}/admin/login/?next=/admin/django_getpaid_auth/clientcredential/"
            )
            page.fill("#id_username", "browser-admin")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(changelist)

            expiry = page.locator("td.field-token_status span", has_text="expires in")
            assert expiry.count() == 2
            assert expiry.first.is_visible()
            assert re.fullmatch(r"expires in \d\d:\d\d", expiry.first.inner_text().strip())
            assert (expiry.first.get_attribute("title") or "").startswith("Expires at ")
            assert page.locator("td.field-token_status", has_text="no token").count() == 1
            live = page.locator("td.field-environment_badge span", has_text="LIVE")
            assert live.is_visible()
            # the badge colours come from the app's stylesheet (no inline styles)
            background = live.evaluate("e => getComputedStyle(e).backgroundColor")
            assert background == "rgb(186, 33, 33)"
            assert mask("acme-live-client-0002") in page.content()

            # the quota column: every current bucket, the hour first; the low one coloured
            quota_cells = page.locator("td.field-quota_status")
            assert quota_cells.count() == 3
            texts = sorted(c.inner_text().split("\n") for c in quota_cells.all())
            assert texts == [
                ["1 of 10 left this hour", "60 of 100 left today"],
                ["7 of 10 left this hour", "97 of 100 left today"],
                ["not seen yet"],
            ]
            low = page.locator("td.field-quota_status .gpa-quota-low")
            assert low.count() == 1
            assert low.inner_text() == "1 of 10 left this hour"
            assert low.is_visible()
            assert low.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(186, 33, 33)"
            assert low.evaluate("e => getComputedStyle(e).color") == "rgb(255, 255, 255)"
            fine = page.locator(
                "td.field-quota_status .gpa-quota", has_text="7 of 10 left this hour"
            )
            assert fine.is_visible()
            assert fine.evaluate("e => getComputedStyle(e).backgroundColor") == "rgba(0, 0, 0, 0)"
            # one bucket per line: the day's line sits below the hour's
            hour_box = low.bounding_box()
            day_box = page.locator(".gpa-quota", has_text="60 of 100").bounding_box()
            assert hour_box and day_box and day_box["y"] >= hour_box["y"] + hour_box["height"] - 1
            html = page.content()
            assert canary not in html and "BROWSER-TOKEN" not in html
            page.screenshot(path=str(ARTIFACTS / "admin-changelist.png"), full_page=True)

            page.goto(f"{changelist}{sandbox.pk}/change/")
            secret_input = page.locator("input[name=new_client_secret]")
            assert secret_input.get_attribute("type") == "password"
            assert secret_input.input_value() == ""
            assert page.locator("input[name=known_scopes][value='payments:read']").is_checked()
            assert page.get_by_text("expires in").first.is_visible()
            block = page.locator("fieldset", has_text="Quota and usage")
            assert block.is_visible()
            assert block.get_by_text("7 of 10 left this hour").is_visible()
            assert block.get_by_text("limit 30, 28 remaining").is_visible()
            assert "answer HTTP 200" in block.inner_text()
            html = page.content()
            assert canary not in html and "BROWSER-TOKEN" not in html
            page.screenshot(path=str(ARTIFACTS / "admin-change.png"), full_page=True)
        finally:
            browser.close()
