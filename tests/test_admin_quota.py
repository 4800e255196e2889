"""The admin's quota column and "Quota and usage" block.

Figures are seeded the way the token store records them (``usage.record_requests`` with
headers parsed by ``quota.from_headers``), or come from a real token answer of the fake
getpaid. A canary secret is stored and every page is searched for it.
"""

from __future__ import annotations

import html as html_lib
import re
import time

import pytest
from django.urls import reverse

import django_getpaid_auth
from django_getpaid_auth import admin as gp_admin
from django_getpaid_auth import cache_backend, quota, service, usage
from django_getpaid_auth.models import ClientCredential
from tests.factories import make_credential, make_tenant
from tests.settings import TEST_KEY_B

pytestmark = pytest.mark.django_db

CRED = "django_getpaid_auth_clientcredential"
HOUR_FIRST_DAY_LATER = "b=per_day;q=100;r={day};t=86340,b=per_hour;q=10;r={hour};t={t}"


def changelist_url() -> str:
    return reverse(f"admin:{CRED}_changelist")


def change_url(credential: ClientCredential) -> str:
    return reverse(f"admin:{CRED}_change", args=[credential.pk])


def body(response) -> str:
    assert response.status_code == 200
    return response.content.decode()


def quota_cell(html: str, credential: ClientCredential) -> str:
    """The quota column's cell of ``credential``'s row in the change list."""
    rows = re.findall(r"<tr[^>]*>.*?</tr>", html, flags=re.S)
    row = next(r for r in rows if f"/{credential.pk}/change/" in r)
    match = re.search(r'<td class="field-quota_status">(.*?)</td>', row, flags=re.S)
    assert match, row
    return match.group(1)


def readonly_field(html: str, name: str) -> str:
    """The content of a read-only field on the change page."""
    match = re.search(
        rf'<div class="[^"]*field-{name}[^"]*">.*?<div class="readonly">(.*?)</div>',
        html,
        flags=re.S,
    )
    assert match, name
    return match.group(1)


def text_of(fragment: str) -> str:
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))).strip()


def seed(
    credential: ClientCredential,
    *,
    hour: int = 7,
    day: int = 97,
    hour_resets_in: int = 3540,
    seen_ago: float = 0.0,
    status: int = 200,
    attempts: int = 1,
    rate_limit: tuple[int, int] | None = (30, 29),
    rate_limit_resets_in: int = 60,
    quota_header: str | None = "",
) -> quota.QuotaReport:
    """Record a token answer's figures for ``credential``, as the token store does."""
    seen_at = time.time() - seen_ago
    headers: dict[str, str] = {}
    if quota_header == "":
        quota_header = HOUR_FIRST_DAY_LATER.format(day=day, hour=hour, t=hour_resets_in)
    if quota_header is not None:
        headers["Auth0-Client-Quota-Limit"] = quota_header
    if rate_limit is not None:
        headers["x-ratelimit-limit"] = str(rate_limit[0])
        headers["x-ratelimit-remaining"] = str(rate_limit[1])
        headers["x-ratelimit-reset"] = str(int(seen_at) + rate_limit_resets_in)
    report = quota.from_headers(headers, status=status, now=seen_at)
    assert report is not None
    snapshot = service.snapshot_of(credential)
    usage.record_requests(snapshot, [None] * (attempts - 1) + [report])
    return report


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", None)


@pytest.fixture
def client_as(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def credential(canary):
    return make_credential(
        make_tenant("acme", "Acme Ltd"),
        client_id="acme-client-id-0123456789",
        client_secret=canary,
    )


# --- the list column --------------------------------------------------------------------------


def test_column_shows_every_current_bucket_hour_first(client_as, credential, canary):
    seed(credential, hour=7, day=97)
    html = body(client_as.get(changelist_url()))
    assert '<th scope="col" class="column-quota_status">' in html
    cell = quota_cell(html, credential)
    assert text_of(cell) == "7 of 10 left this hour 97 of 100 left today"
    assert cell.index("this hour") < cell.index("today")  # the header sent the day first
    assert cell.count('class="gpa-quota"') == 2  # neither is low
    assert "gpa-quota-low" not in cell and "stale" not in cell
    assert re.search(r'title="Seen at [^"]+; resets at [^"]+ \(in 5\d:\d\d\)\."', cell)
    assert canary not in html


def test_column_colours_a_low_bucket(client_as, credential):
    other = make_credential(client_id="other-client-id-42")
    seed(credential, hour=1, day=60)  # 1 of 10 is under 20 %
    seed(other, hour=2, day=20)  # 2 of 10 and 20 of 100: exactly 20 %, not under
    html = body(client_as.get(changelist_url()))
    low = quota_cell(html, credential)
    assert re.search(r'<span class="gpa-quota gpa-quota-low" [^>]*>1 of 10 left this hour<', low)
    assert re.search(r'<span class="gpa-quota" [^>]*>60 of 100 left today<', low)
    assert "gpa-quota-low" not in quota_cell(html, other)
    assert 'style="' not in low  # the colour comes from the stylesheet (strict CSP)
    assert "django_getpaid_auth/admin.css" in html


def test_column_marks_figures_from_a_window_that_has_reset(client_as, credential):
    # seen 70 minutes ago with 1 of 10 left and the hour resetting 59 minutes later
    seed(credential, hour=1, day=50, hour_resets_in=3540, seen_ago=70 * 60)
    cell = quota_cell(body(client_as.get(changelist_url())), credential)
    assert re.search(
        r'<span class="gpa-quota gpa-quota-stale" title="Seen at [^"]+; the window reset at '
        r'[^"]+, so these are stale\.">1 of 10 left this hour \(stale: reset since seen\)<',
        cell,
    ), cell
    assert "gpa-quota-low" not in cell  # a reset window is not an alarm
    assert re.search(r'<span class="gpa-quota" [^>]*>50 of 100 left today<', cell)


def test_column_moves_to_stale_when_the_clock_passes_the_reset(client_as, credential, fake_clock):
    seed(credential, hour=1, hour_resets_in=600)
    assert "gpa-quota-low" in quota_cell(body(client_as.get(changelist_url())), credential)
    fake_clock.advance(601)
    cell = quota_cell(body(client_as.get(changelist_url())), credential)
    assert "1 of 10 left this hour (stale: reset since seen)" in text_of(cell)
    assert "gpa-quota-low" not in cell


def test_column_without_figures(client_as, credential, settings):
    html = body(client_as.get(changelist_url()))
    cell = quota_cell(html, credential)
    assert text_of(cell) == "not seen yet"
    assert "gpa-muted" in cell


def test_column_for_a_row_that_cannot_be_read(client_as, credential, settings, canary):
    seed(credential, hour=1)
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": [TEST_KEY_B]}
    html = body(client_as.get(changelist_url()))
    assert text_of(quota_cell(html, credential)) == "—"
    assert canary not in html


def test_column_with_only_a_rate_limit(client_as, credential):
    seed(credential, quota_header=None, rate_limit=(30, 4))
    cell = quota_cell(body(client_as.get(changelist_url())), credential)
    assert text_of(cell) == "rate limit: 4 of 30 left"


def test_column_after_a_429(client_as, credential):
    seed(credential, hour=0, day=40, status=429)
    cell = quota_cell(body(client_as.get(changelist_url())), credential)
    assert re.search(r'class="gpa-quota gpa-quota-low" [^>]*>0 of 10 left this hour<', cell)


def test_column_from_a_real_token_answer(client_as, credential, fake_getpaid_settings, canary):
    fake = fake_getpaid_settings
    fake.register_client(credential.client_id, canary)
    fake.set_token_quota({"per_hour": 10, "per_day": 100})
    token = django_getpaid_auth.get_token(credential.tenant)
    assert fake.token_request_count() == 1
    html = body(client_as.get(changelist_url()))
    assert text_of(quota_cell(html, credential)) == "9 of 10 left this hour 99 of 100 left today"
    detail = body(client_as.get(change_url(credential)))
    assert text_of(readonly_field(detail, "token_requests_this_hour")) == "1"
    assert fake.token_request_count() == 1  # rendering never asks for a token
    for page in (html, detail):
        assert canary not in page and token.value not in page


def test_list_reads_the_cache_once_per_page_with_quota(client_as, monkeypatch):
    rows = [make_credential() for _ in range(5)]
    for i, row in enumerate(rows[:3]):
        seed(row, hour=i, attempts=i + 1)
    calls = []
    real_get_many = cache_backend.get_many
    monkeypatch.setattr(
        cache_backend, "get_many", lambda names: calls.append("get_many") or real_get_many(names)
    )
    monkeypatch.setattr(cache_backend, "get", lambda *a, **k: calls.append("get"))
    html = body(client_as.get(changelist_url()))
    assert calls == ["get_many"]
    assert html.count("left this hour") == 3
    assert html.count("gpa-quota-low") == 2  # 0 and 1 of 10
    assert html.count("not seen yet") == 2


# --- the change page --------------------------------------------------------------------------


def test_change_page_block(client_as, credential, canary, monkeypatch):
    seed(credential, hour=1, day=97, attempts=2, seen_ago=125)
    # the last answer: 3 requests this hour
    seed(credential, hour=1, day=97, seen_ago=120, rate_limit_resets_in=600)
    usage.write_used(service.snapshot_of(credential))
    calls = []
    real_get_many = cache_backend.get_many
    monkeypatch.setattr(
        cache_backend, "get_many", lambda names: calls.append("get_many") or real_get_many(names)
    )
    html = body(client_as.get(change_url(credential)))
    assert calls == ["get_many"]  # the block and the token status share one read
    assert re.search(r"<h2 [^>]*>Quota and usage</h2>", html)
    buckets = readonly_field(html, "quota_buckets")
    rows = re.findall(r"<tr>(.*?)</tr>", buckets, flags=re.S)
    assert [text_of(r).split(" ")[0] for r in rows] == ["bucket", "per_hour", "per_day"]
    assert re.fullmatch(
        r"per_hour 1 of 10 left this hour 1 / 10 resets at \S+ \S+ \S+ \(in 5\d:\d\d\) "
        r"under 20 % left",
        text_of(rows[1]),
    ), text_of(rows[1])
    assert 'class="gpa-quota gpa-quota-low"' in rows[1]
    assert re.fullmatch(
        r"per_day 97 of 100 left today 97 / 100 resets at .+ \(in \d+:\d\d:\d\d\)",
        text_of(rows[2]),
    ), text_of(rows[2])
    assert re.fullmatch(
        r"limit 30, 29 remaining; resets at \S+ \S+ \S+ \(in 0[78]:\d\d\)",
        text_of(readonly_field(html, "rate_limit")),
    ), text_of(readonly_field(html, "rate_limit"))
    assert re.fullmatch(
        r"\S+ \S+ \S+ \(2 minutes ago\) · answer HTTP 200",
        text_of(readonly_field(html, "quota_seen")),
    ), text_of(readonly_field(html, "quota_seen"))
    assert text_of(readonly_field(html, "token_requests_this_hour")) == "3"
    assert re.fullmatch(r"\S+ \S+ \S+ \(just now\)", text_of(readonly_field(html, "last_used")))
    assert canary not in html


def test_change_page_block_without_figures(client_as, credential):
    html = body(client_as.get(change_url(credential)))
    assert text_of(readonly_field(html, "quota_buckets")) == "No quota figures seen yet."
    assert text_of(readonly_field(html, "rate_limit")) == "not seen yet"
    assert text_of(readonly_field(html, "quota_seen")) == "never"
    assert text_of(readonly_field(html, "token_requests_this_hour")) == "none counted"
    assert text_of(readonly_field(html, "last_used")) == "not recorded"


def test_change_page_block_with_stale_figures_and_a_429(client_as, credential):
    seed(credential, hour=0, day=3, status=429, seen_ago=2 * 3600, rate_limit=(30, 0))
    html = body(client_as.get(change_url(credential)))
    buckets = readonly_field(html, "quota_buckets")
    hour = text_of(re.findall(r"<tr>(.*?)</tr>", buckets, flags=re.S)[1])
    assert re.fullmatch(
        r"per_hour 0 of 10 left this hour \(stale: reset since seen\) 0 / 10 "
        r"reset at .+, after these figures were seen",
        hour,
    ), hour
    assert "under 20 % left" in buckets  # the day bucket: 3 of 100, still current
    assert "(stale: reset since seen)" in text_of(readonly_field(html, "rate_limit"))
    seen = readonly_field(html, "quota_seen")
    assert '<span class="gpa-bad">answer HTTP 429</span>' in seen
    assert "2 hours ago" in text_of(seen)


def test_view_only_user_sees_the_block(client, django_user_model, credential):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", "v@example.com", None, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_clientcredential"))
    client.force_login(viewer)
    seed(credential, hour=7)
    html = body(client.get(change_url(credential)))
    assert "7 of 10 left this hour" in text_of(readonly_field(html, "quota_buckets"))
    assert "7 of 10 left this hour" in body(client.get(changelist_url()))


# --- garbage in the cache ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota_value", "count_value", "used_value"),
    [
        ("junk", "3", "yesterday"),
        ({"seen_at": 1e300, "status": 200, "buckets": [], "rate_limit": None}, -1, float("nan")),
        (
            {
                "seen_at": time.time(),
                "status": 200,
                "buckets": [{"bucket": "per_hour", "limit": 10, "remaining": 11, "resets_at": 2e9}],
                "rate_limit": None,
            },
            10**12,
            True,
        ),
        (
            {"seen_at": time.time(), "status": "200", "buckets": "x", "rate_limit": [1]},
            [1, 2],
            {"at": 1},
        ),
        ([None], None, 1e300),
    ],
)
def test_garbage_under_the_usage_keys_reads_as_nothing(
    client_as, credential, quota_value, count_value, used_value
):
    """Anyone who can write to the cache must not be able to break the admin."""
    snapshot = service.snapshot_of(credential)
    now = time.time()
    cache_backend.set(usage.quota_key(snapshot), quota_value, 60)
    cache_backend.set(usage.count_key(snapshot, now), count_value, 60)
    cache_backend.set(usage.used_key(snapshot), used_value, 60)
    assert text_of(quota_cell(body(client_as.get(changelist_url())), credential)) == (
        "not seen yet"
    )
    html = body(client_as.get(change_url(credential)))
    assert text_of(readonly_field(html, "quota_buckets")) == "No quota figures seen yet."
    assert text_of(readonly_field(html, "token_requests_this_hour")) == "none counted"
    assert text_of(readonly_field(html, "last_used")) == "not recorded"


def test_render_functions_accept_an_unreadable_row():
    """The renderers take None (a row whose secret or settings make it unreadable)."""
    now = time.time()
    assert text_of(gp_admin.render_quota(None, now)) == "—"
    assert text_of(gp_admin.render_quota_buckets(None, now)) == "No quota figures seen yet."
    assert text_of(gp_admin.render_rate_limit(None, now)) == "not seen yet"
    assert text_of(gp_admin.render_quota_seen(None, now)) == "never"
    assert text_of(gp_admin.render_requests_this_hour(None)) == "none counted"
    assert text_of(gp_admin.render_last_used(None, now)) == "not recorded"
