"""Auth0's quota and rate-limit headers: parsed when sane, ignored (never an error) when not."""

from __future__ import annotations

import logging

import pytest
import requests.structures
from hypothesis import given
from hypothesis import strategies as st

from django_getpaid_auth import quota
from django_getpaid_auth.token_client import rate_limit_wait

NOW = 1_800_000_000.0
AUTH0 = "b=per_hour;q=10;r=7;t=3540,b=per_day;q=100;r=97;t=86340"


def parse(headers, status=200):
    return quota.from_headers(
        requests.structures.CaseInsensitiveDict(headers), status=status, now=NOW
    )


def test_every_bucket_and_the_rate_limit():
    report = parse(
        {
            "auth0-client-quota-limit": AUTH0,
            "X-RateLimit-Limit": "30",
            "X-RateLimit-Remaining": "29",
            "X-RateLimit-Reset": str(int(NOW) + 5),
        }
    )
    assert report.seen_at == NOW and report.status == 200
    assert [(b.name, b.limit, b.remaining, b.resets_at) for b in report.buckets] == [
        ("per_hour", 10, 7, NOW + 3540),
        ("per_day", 100, 97, NOW + 86340),
    ]
    assert report.rate_limit == quota.RateLimit(limit=30, remaining=29, resets_at=NOW + 5)
    assert report.bucket("per_day").describe() == "97 of 100 left today"
    assert report.bucket("per_hour").describe() == "7 of 10 left this hour"
    assert report.low_buckets() == ()
    assert quota.QuotaReport.from_dict(report.to_dict()) == report


def test_low_is_under_20_percent():
    report = parse({"Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=1;t=60,b=per_day;q=10;r=2;t=60"})
    assert [b.name for b in report.low_buckets()] == ["per_hour"]
    assert parse({"Auth0-Client-Quota-Limit": "b=per_hour;q=0;r=0;t=60"}).low_buckets() == ()


def test_current_buckets_drop_windows_that_have_reset():
    report = parse({"Auth0-Client-Quota-Limit": AUTH0})
    assert [b.name for b in report.current_buckets(NOW + 3600)] == ["per_day"]
    assert report.current_buckets(NOW + 90000) == ()


def test_rate_limit_reset_in_seconds_from_now_and_none():
    report = parse(
        {"x-ratelimit-limit": "5", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "7"}
    )
    assert report.rate_limit.resets_at == NOW + 7
    report = parse({"x-ratelimit-limit": "5", "x-ratelimit-remaining": "5"})
    assert report.rate_limit.resets_at is None
    assert report.buckets == ()


def test_nothing_sent_is_none():
    assert parse({}) is None
    assert parse({"Content-Type": "application/json"}) is None


@pytest.mark.parametrize(
    "value",
    [
        "b=per_hour;q=10;r=11;t=60",  # remaining above quota
        "b=per_hour;q=ten;r=7;t=60",
        "b=per_hour;q=10;r=-1;t=60",
        "b=per_hour;q=10;r=7",  # no t
        "b=per_hour;q=10;r=7;t=60;q=11",  # repeated key
        "b=per_hour;q=10;r=7;t=60,b=per_hour;q=10;r=7;t=60",  # repeated bucket
        "b=per hour;q=10;r=7;t=60",
        "b=per_hour;q=１０;r=7;t=60",  # fullwidth digits
        "b=per_hour;q=10;r=7;t=6.5",
        "b=per_hour;q=99999999999999;r=7;t=60",  # 14 digits
        ",".join(f"b=b{i};q=1;r=1;t=1" for i in range(9)),  # too many buckets
        "b=per_hour;q=10;r=7;t=60,b=" + "x" * 2000,  # too long
        "garbage",
    ],
)
def test_malformed_quota_header_is_ignored_with_a_debug_log(value, caplog):
    with caplog.at_level(logging.DEBUG, logger="django_getpaid_auth.quota"):
        assert parse({"Auth0-Client-Quota-Limit": value}) is None
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-limit": "10"},
        {"x-ratelimit-remaining": "10"},
        {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "11"},
        {"x-ratelimit-limit": "10, 10", "x-ratelimit-remaining": "1"},
        {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "1", "x-ratelimit-reset": "soon"},
    ],
)
def test_malformed_rate_limit_is_ignored(headers, caplog):
    with caplog.at_level(logging.DEBUG, logger="django_getpaid_auth.quota"):
        assert parse(headers) is None
    assert caplog.records and all(r.levelno == logging.DEBUG for r in caplog.records)


def test_far_resets_are_believed_only_as_far_as_the_bound():
    report = parse({"Auth0-Client-Quota-Limit": "b=per_day;q=1;r=0;t=9999999999"})
    assert report.bucket("per_day").resets_at == NOW + quota.MAX_RESET_SECONDS


def test_429_wait_uses_the_exhausted_bucket():
    wait, text = rate_limit_wait(
        {"Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=3;t=100,b=per_day;q=100;r=0;t=5000"}
    )
    assert 4990 <= wait <= 5000
    assert text.startswith("b=per_hour")


@pytest.mark.parametrize(
    "data",
    [
        None,
        "x",
        {},
        {"seen_at": NOW, "status": 200, "buckets": "x", "rate_limit": None},
        {"seen_at": NOW, "status": 999, "buckets": [], "rate_limit": None},
        {"seen_at": True, "status": 200, "buckets": [], "rate_limit": None},
        {"seen_at": NOW, "status": 200, "buckets": [{"bucket": "h"}], "rate_limit": None},
        {
            "seen_at": NOW,
            "status": 200,
            "buckets": [{"bucket": "h", "limit": 1, "remaining": 2, "resets_at": NOW}],
            "rate_limit": None,
        },
        {"seen_at": NOW, "status": 200, "buckets": [], "rate_limit": {"limit": 1}},
        {
            "seen_at": NOW,
            "status": 200,
            "buckets": [],
            "rate_limit": {"limit": 1, "remaining": 0, "resets_at": "later"},
        },
        {"seen_at": float("inf"), "status": 200, "buckets": [], "rate_limit": None},
        {"seen_at": 10**400, "status": 200, "buckets": [], "rate_limit": None},  # no overflow
        {"seen_at": float("nan"), "status": 200, "buckets": [], "rate_limit": None},
        {
            "seen_at": NOW,
            "status": 200,
            "buckets": [{"bucket": "h", "limit": 1, "remaining": 0, "resets_at": 10**400}],
            "rate_limit": None,
        },
        {
            "seen_at": NOW,
            "status": 200,
            "buckets": [],
            "rate_limit": {"limit": 1, "remaining": 0, "resets_at": 10**400},
        },
    ],
)
def test_cache_values_that_we_did_not_write_read_as_nothing(data):
    assert quota.QuotaReport.from_dict(data) is None


@given(st.text(max_size=300))
def test_any_header_text_parses_or_is_ignored(value):
    report = parse({"Auth0-Client-Quota-Limit": value, "x-ratelimit-limit": value})
    if report is not None:
        for bucket in report.buckets:
            assert 0 <= bucket.remaining <= bucket.limit <= quota.MAX_NUMBER
            assert NOW <= bucket.resets_at <= NOW + quota.MAX_RESET_SECONDS
        assert quota.QuotaReport.from_dict(report.to_dict()) == report


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["per_hour", "per_day", "per_minute", "x"]),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
        ),
        max_size=4,
        unique_by=lambda item: item[0],
    )
)
def test_well_formed_headers_round_trip(items):
    value = ",".join(f"b={b};q={max(q, r)};r={r};t={t}" for b, q, r, t in items)
    report = parse({"Auth0-Client-Quota-Limit": value})
    if not items:
        assert report is None
        return
    assert [(x.name, x.limit, x.remaining) for x in report.buckets] == [
        (b, max(q, r), r) for b, q, r, _ in items
    ]
