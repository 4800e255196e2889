"""The fake getpaid's Auth0 token quota, rate limit and raw token headers, over real HTTP.

No Django needed. Most tests fix the fake's limits clock so ``t``, ``x-ratelimit-reset``
and ``Retry-After`` are exact and no window can roll over mid-test; a few use the real
clock to show the defaults behave.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from django_getpaid_auth.testing import LIVE_AUDIENCE, QUOTA_BUCKETS, FakeGetpaid

REPO_ROOT = Path(__file__).resolve().parents[1]
HOUR_START = 472_222 * 3600  # 2023-11-14 22:00:00 UTC, the top of an hour
DAY_START = HOUR_START // 86400 * 86400
QUOTA_EXCEEDED = {"error": "too_many_requests", "error_description": "Quota exceeded"}


class Clock:
    """A settable clock for ``FakeGetpaid.token_limits_clock``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(HOUR_START + 60)  # one minute into the hour: per_hour t=3540


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeGetpaid]:
    with FakeGetpaid() as server:
        server.token_limits_clock = clock
        server.register_client("client-a", "secret-a")
        server.register_client("client-b", "secret-b")
        yield server


def post_token(fake: FakeGetpaid, client: str = "a", **overrides: Any) -> requests.Response:
    body = {
        "client_id": f"client-{client}",
        "client_secret": f"secret-{client}",
        "audience": LIVE_AUDIENCE,
        "grant_type": "client_credentials",
    }
    body.update(overrides)
    return requests.post(fake.token_url, json=body, timeout=5)


def quota_header(response: requests.Response) -> str:
    return response.headers["Auth0-Client-Quota-Limit"]


def parse_quota(value: str) -> dict[str, dict[str, int]]:
    """``b=per_hour;q=10;r=7;t=3540,...`` as {bucket: {q, r, t}}."""
    buckets = {}
    for entry in value.split(","):
        fields = dict(part.split("=", 1) for part in entry.split(";"))
        name = fields.pop("b")
        buckets[name] = {k: int(v) for k, v in fields.items()}
    return buckets


def day_t(clock: Clock) -> int:
    return DAY_START + 86400 - int(clock.now)


# --------------------------------------------------------------------------- defaults


def test_without_configuration_no_quota_or_rate_limit_headers_but_tokens_are_counted(
    fake: FakeGetpaid,
) -> None:
    for _ in range(2):
        response = post_token(fake)
        assert response.status_code == 200
        assert "Auth0-Client-Quota-Limit" not in response.headers
        assert not [h for h in response.headers if h.lower().startswith("x-ratelimit")]
    assert fake.token_quota("client-a") == {}
    assert fake.token_quota_usage("client-a") == {"per_hour": 2, "per_day": 2}
    assert fake.token_rate_limit_usage() == 0
    assert fake.enforce_token_limits is True


def test_quota_buckets_are_exported() -> None:
    assert QUOTA_BUCKETS == {"per_hour": 3600, "per_day": 86400}


# --------------------------------------------------------------------------- quota on 200


def test_quota_header_counts_down_on_every_token(fake: FakeGetpaid, clock: Clock) -> None:
    fake.set_token_quota({"per_hour": 10, "per_day": 100})
    headers = []
    for _ in range(3):
        response = post_token(fake)
        assert response.status_code == 200
        headers.append(quota_header(response))
        clock.now += 1
    t_day = DAY_START + 86400 - (HOUR_START + 60)
    assert headers == [
        f"b=per_hour;q=10;r=9;t=3540,b=per_day;q=100;r=99;t={t_day}",
        f"b=per_hour;q=10;r=8;t=3539,b=per_day;q=100;r=98;t={t_day - 1}",
        f"b=per_hour;q=10;r=7;t=3538,b=per_day;q=100;r=97;t={t_day - 2}",
    ]
    assert fake.token_quota_usage("client-a") == {"per_hour": 3, "per_day": 3}


def test_constructor_quota_with_the_real_clock() -> None:
    with FakeGetpaid(token_quota={"per_hour": 5}) as fake:
        fake.register_client("client-a", "secret-a")
        seen = [parse_quota(quota_header(post_token(fake)))["per_hour"] for _ in range(3)]
    assert [bucket["q"] for bucket in seen] == [5, 5, 5]
    t_values = [bucket["t"] for bucket in seen]
    assert all(0 < t <= 3600 for t in t_values)
    if t_values == sorted(t_values, reverse=True):  # no new hour began mid-test
        assert [bucket["r"] for bucket in seen] == [4, 3, 2]


def test_quota_is_counted_per_client_id(fake: FakeGetpaid, clock: Clock) -> None:
    fake.set_token_quota({"per_hour": 10})
    post_token(fake, "a")
    post_token(fake, "a")
    response_b = post_token(fake, "b")
    response_a = post_token(fake, "a")
    assert quota_header(response_b) == "b=per_hour;q=10;r=9;t=3540"
    assert quota_header(response_a) == "b=per_hour;q=10;r=7;t=3540"
    assert fake.token_quota_usage("client-a")["per_hour"] == 3
    assert fake.token_quota_usage("client-b")["per_hour"] == 1


def test_per_client_quota_overrides_the_default_and_empty_exempts(fake: FakeGetpaid) -> None:
    fake.set_token_quota({"per_hour": 10})
    fake.set_token_quota({"per_hour": 1, "per_day": 3}, client_id="client-b")
    assert fake.token_quota("client-a") == {"per_hour": 10}
    assert fake.token_quota("client-b") == {"per_hour": 1, "per_day": 3}
    assert parse_quota(quota_header(post_token(fake, "b")))["per_hour"]["q"] == 1
    assert parse_quota(quota_header(post_token(fake, "a")))["per_hour"]["q"] == 10

    fake.set_token_quota({}, client_id="client-b")  # exempt: no header, no refusal
    response = post_token(fake, "b")
    assert response.status_code == 200
    assert "Auth0-Client-Quota-Limit" not in response.headers

    fake.clear_token_quota(client_id="client-b")  # back to the default
    assert fake.token_quota("client-b") == {"per_hour": 10}
    assert quota_header(post_token(fake, "b")).startswith("b=per_hour;q=10;r=7;")

    fake.clear_token_quota()
    assert "Auth0-Client-Quota-Limit" not in post_token(fake, "a").headers
    assert "Auth0-Client-Quota-Limit" not in post_token(fake, "b").headers


def test_failed_requests_get_no_quota_header_and_are_not_counted(fake: FakeGetpaid) -> None:
    fake.set_token_quota({"per_hour": 10})
    assert post_token(fake, client_secret="wrong").status_code == 401
    response = post_token(fake, scope="nonsense:scope")
    assert response.status_code == 403
    assert "Auth0-Client-Quota-Limit" not in response.headers
    assert fake.token_quota_usage("client-a") == {"per_hour": 0, "per_day": 0}


# --------------------------------------------------------------------------- exhaustion


def test_exhausted_hour_answers_429_with_r_0_and_retry_after_t(
    fake: FakeGetpaid, clock: Clock
) -> None:
    fake.set_token_quota({"per_hour": 2, "per_day": 100})
    assert [post_token(fake).status_code for _ in range(2)] == [200, 200]
    clock.now += 40
    for _ in range(2):
        response = post_token(fake)
        assert response.status_code == 429
        assert response.json() == QUOTA_EXCEEDED
        assert response.headers["Retry-After"] == "3500"
        assert quota_header(response) == (
            f"b=per_hour;q=2;r=0;t=3500,b=per_day;q=100;r=98;t={day_t(clock)}"
        )
        assert response.headers["Cache-Control"] == "no-store"
    assert fake.token_quota_usage("client-a") == {"per_hour": 2, "per_day": 2}
    assert [e["status"] for e in fake.token_requests] == [200, 200, 429, 429]
    assert fake.token_requests[-1]["error"] == "too_many_requests"
    # Another client's quota is its own.
    assert post_token(fake, "b").status_code == 200


def test_the_next_hour_window_gives_the_quota_back(fake: FakeGetpaid, clock: Clock) -> None:
    fake.set_token_quota({"per_hour": 1, "per_day": 100})
    assert post_token(fake).status_code == 200
    assert post_token(fake).status_code == 429
    clock.now = HOUR_START + 3600  # the top of the next hour
    response = post_token(fake)
    assert response.status_code == 200
    assert parse_quota(quota_header(response)) == {
        "per_hour": {"q": 1, "r": 0, "t": 3600},
        "per_day": {"q": 100, "r": 98, "t": day_t(clock)},
    }


def test_exhausted_day_waits_for_the_day_bucket(fake: FakeGetpaid, clock: Clock) -> None:
    fake.set_token_quota({"per_hour": 10, "per_day": 2})
    post_token(fake)
    post_token(fake)
    response = post_token(fake)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == str(day_t(clock))
    assert parse_quota(quota_header(response))["per_day"]["r"] == 0
    assert parse_quota(quota_header(response))["per_hour"]["r"] == 8
    clock.now = HOUR_START + 3600  # a new hour does not help; only a new day does
    assert post_token(fake).status_code == 429
    clock.now = DAY_START + 86400
    assert post_token(fake).status_code == 200


def test_zero_quota_refuses_the_first_token(fake: FakeGetpaid) -> None:
    fake.set_token_quota({"per_hour": 0})
    response = post_token(fake)
    assert response.status_code == 429
    assert quota_header(response) == "b=per_hour;q=0;r=0;t=3540"
    assert response.headers["Retry-After"] == "3540"


def test_enforcement_off_reports_r_0_but_issues_tokens(fake: FakeGetpaid) -> None:
    fake.enforce_token_limits = False
    fake.set_token_quota({"per_hour": 2})
    responses = [post_token(fake) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert [parse_quota(quota_header(r))["per_hour"]["r"] for r in responses] == [1, 0, 0, 0]
    assert fake.token_quota_usage("client-a")["per_hour"] == 4
    fake.enforce_token_limits = True
    assert post_token(fake).status_code == 429


def test_enforcement_off_from_the_constructor() -> None:
    with FakeGetpaid(token_quota={"per_day": 1}, enforce_token_limits=False) as fake:
        fake.register_client("client-a", "secret-a")
        assert [post_token(fake).status_code for _ in range(2)] == [200, 200]
        assert fake.enforce_token_limits is False


def test_reset_token_quota_starts_new_windows(fake: FakeGetpaid) -> None:
    fake.set_token_quota({"per_hour": 1})
    post_token(fake, "a")
    post_token(fake, "b")
    assert post_token(fake, "a").status_code == 429
    fake.reset_token_quota("client-a")
    assert fake.token_quota_usage("client-a") == {"per_hour": 0, "per_day": 0}
    assert fake.token_quota_usage("client-b") == {"per_hour": 1, "per_day": 1}
    assert post_token(fake, "a").status_code == 200
    assert post_token(fake, "b").status_code == 429
    fake.reset_token_quota()
    assert post_token(fake, "b").status_code == 200
    assert quota_header(post_token(fake, "a")) == "b=per_hour;q=1;r=0;t=3540"


def test_reset_counters_keeps_quota_counts(fake: FakeGetpaid) -> None:
    fake.set_token_quota({"per_hour": 1})
    post_token(fake)
    fake.reset_counters()
    assert fake.token_request_count() == 0
    assert post_token(fake).status_code == 429


def test_faults_neither_consume_quota_nor_change(fake: FakeGetpaid) -> None:
    fake.set_token_quota({"per_hour": 1})
    fake.fail_next_token_requests("503")
    fake.fail_next_token_requests("quota_429", retry_after=7)
    assert post_token(fake).status_code == 503
    response = post_token(fake)
    assert response.status_code == 429
    assert quota_header(response) == "b=per_hour;q=10;r=0;t=7"  # the scripted fault, as before
    assert fake.token_quota_usage("client-a")["per_hour"] == 0
    assert post_token(fake).status_code == 200


def test_commit_then_reset_spends_quota(fake: FakeGetpaid) -> None:
    fake.set_token_quota({"per_hour": 1})
    fake.fail_next_token_requests("commit_then_reset")
    with pytest.raises(requests.ConnectionError):
        post_token(fake)
    assert fake.token_quota_usage("client-a")["per_hour"] == 1
    assert post_token(fake).status_code == 429


def test_quota_holds_exactly_under_four_client_processes() -> None:
    """Four processes racing for tokens: exactly the quota is issued, the rest get 429."""
    code = textwrap.dedent(
        """
        import json, sys, urllib.error, urllib.request
        url, results = sys.argv[1], []
        body = json.dumps({"client_id": "client-a", "client_secret": "secret-a",
                           "audience": "https://api.getpaid.io",
                           "grant_type": "client_credentials"}).encode()
        for _ in range(8):
            request = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    results.append([response.status, response.headers["Auth0-Client-Quota-Limit"]])
            except urllib.error.HTTPError as error:
                results.append([error.code, error.headers["Auth0-Client-Quota-Limit"]])
        print(json.dumps(results))
        """
    )
    with FakeGetpaid(token_quota={"per_hour": 13, "per_day": 1000}) as fake:
        fake.token_limits_clock = Clock(HOUR_START + 60)
        fake.register_client("client-a", "secret-a")
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", code, fake.token_url],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
            )
            for _ in range(4)
        ]
        results = [item for w in workers for item in json.loads(w.communicate(timeout=60)[0])]
        usage = fake.token_quota_usage("client-a")
    assert len(results) == 32
    ok = [parse_quota(header) for status, header in results if status == 200]
    assert len(ok) == 13
    assert sorted(q["per_hour"]["r"] for q in ok) == list(range(13))  # each figure once
    refused = [parse_quota(header) for status, header in results if status == 429]
    assert len(refused) == 19
    assert all(q["per_hour"]["r"] == 0 and q["per_day"]["r"] == 987 for q in refused)
    assert usage == {"per_hour": 13, "per_day": 13}


# --------------------------------------------------------------------------- rate limit


def test_rate_limit_headers_count_down_then_429(fake: FakeGetpaid, clock: Clock) -> None:
    clock.now = HOUR_START + 45  # window of 60 s: resets at HOUR_START + 60
    fake.set_token_rate_limit(3, window=60)
    responses = [post_token(fake) for _ in range(2)]
    responses.append(post_token(fake, client_secret="wrong"))  # every request counts
    clock.now += 5
    refused = post_token(fake)
    reset = str(HOUR_START + 60)
    assert [r.status_code for r in responses] == [200, 200, 401]
    for response, remaining in zip(responses, ["2", "1", "0"], strict=True):
        assert response.headers["x-ratelimit-limit"] == "3"
        assert response.headers["x-ratelimit-remaining"] == remaining
        assert response.headers["x-ratelimit-reset"] == reset
    assert refused.status_code == 429
    assert refused.json() == {
        "error": "too_many_requests",
        "error_description": "Global limit has been reached",
    }
    assert refused.headers["Retry-After"] == "10"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-reset"] == reset
    assert "Auth0-Client-Quota-Limit" not in refused.headers
    assert fake.token_rate_limit_usage() == 3
    # A rate-limited request issues no token, so it spends no quota.
    assert fake.token_quota_usage("client-a")["per_hour"] == 2

    clock.now = HOUR_START + 60  # the next window
    response = post_token(fake)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining"] == "2"
    assert response.headers["x-ratelimit-reset"] == str(HOUR_START + 120)


def test_rate_limit_and_quota_headers_together_and_on_the_quota_429(fake: FakeGetpaid) -> None:
    fake.set_token_rate_limit(100)
    fake.set_token_quota({"per_hour": 1})
    assert post_token(fake).status_code == 200
    response = post_token(fake)
    assert response.status_code == 429
    assert response.json() == QUOTA_EXCEEDED
    assert response.headers["x-ratelimit-remaining"] == "98"
    assert quota_header(response) == "b=per_hour;q=1;r=0;t=3540"


def test_rate_limit_enforcement_off_reset_and_clear(fake: FakeGetpaid) -> None:
    fake.set_token_rate_limit(1, window=3600)
    assert post_token(fake).status_code == 200
    assert post_token(fake).status_code == 429
    fake.enforce_token_limits = False
    response = post_token(fake)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining"] == "0"
    fake.enforce_token_limits = True
    fake.reset_token_rate_limit()
    assert fake.token_rate_limit_usage() == 0
    assert post_token(fake).headers["x-ratelimit-remaining"] == "0"
    fake.clear_token_rate_limit()
    response = post_token(fake)
    assert response.status_code == 200
    assert "x-ratelimit-limit" not in response.headers


def test_rate_limit_from_the_constructor_with_the_real_clock() -> None:
    with FakeGetpaid(token_rate_limit=30, token_rate_limit_window=60) as fake:
        fake.register_client("client-a", "secret-a")
        response = post_token(fake)
    assert response.headers["x-ratelimit-limit"] == "30"
    assert response.headers["x-ratelimit-remaining"] in {"29", "28"}
    reset = int(response.headers["x-ratelimit-reset"])
    assert reset % 60 == 0
    assert 0 < reset - time.time() <= 61


# --------------------------------------------------------------------------- raw headers


def test_raw_headers_replace_computed_ones_on_every_answer(fake: FakeGetpaid) -> None:
    fake.set_token_quota({"per_hour": 1})
    fake.set_token_rate_limit(100)
    fake.set_token_response_headers(
        {"Auth0-Client-Quota-Limit": "b=per_hour;q=ten;r=;t=-1", "X-RateLimit-Reset": "soon"}
    )
    ok = post_token(fake)
    refused = post_token(fake)
    denied = post_token(fake, client_secret="wrong")
    fake.fail_next_token_requests("503")
    fault = post_token(fake)
    for response, status in [(ok, 200), (refused, 429), (denied, 401), (fault, 503)]:
        assert response.status_code == status
        assert quota_header(response) == "b=per_hour;q=ten;r=;t=-1"
        assert response.headers["x-ratelimit-reset"] == "soon"
    assert ok.headers["x-ratelimit-remaining"] == "99"  # not replaced: still computed
    assert refused.headers["Retry-After"] == "3540"
    fake.clear_token_response_headers()
    assert post_token(fake).headers["x-ratelimit-reset"] != "soon"


def test_raw_headers_can_repeat_a_name_and_be_empty() -> None:
    headers = [
        ("Auth0-Client-Quota-Limit", "b=per_hour;q=10;r=7;t=3540"),
        ("Auth0-Client-Quota-Limit", ""),
        ("x-ratelimit-remaining", "-3"),
    ]
    with FakeGetpaid(token_response_headers=headers) as fake:
        fake.register_client("client-a", "secret-a")
        connection = http.client.HTTPConnection(fake.host, int(fake.url.rsplit(":", 1)[1]))
        body = json.dumps(
            {
                "client_id": "client-a",
                "client_secret": "secret-a",
                "audience": LIVE_AUDIENCE,
                "grant_type": "client_credentials",
            }
        )
        connection.request("POST", "/oauth/token", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        connection.close()
    assert response.status == 200
    assert response.msg.get_all("Auth0-Client-Quota-Limit") == ["b=per_hour;q=10;r=7;t=3540", ""]
    assert response.msg.get_all("x-ratelimit-remaining") == ["-3"]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("quota", "error", "message"),
    [
        ({"per_minute": 5}, ValueError, "unknown token quota bucket 'per_minute'; expected one of"),
        ({"per_hour": -1}, ValueError, "token quota 'per_hour' must be >= 0, got -1"),
        ({"per_hour": 1.5}, TypeError, "token quota 'per_hour' must be an int, not float"),
        ({"per_hour": True}, TypeError, "token quota 'per_hour' must be an int, not bool"),
        ({"per_hour": "10"}, TypeError, "token quota 'per_hour' must be an int, not str"),
        ([("per_hour", 10)], TypeError, "token quota must be a mapping"),
    ],
)
def test_bad_quota_is_refused_clearly(
    fake: FakeGetpaid, quota: Any, error: type[Exception], message: str
) -> None:
    fake.set_token_quota({"per_hour": 3})
    with pytest.raises(error, match="^" + message.replace("(", r"\(")):
        fake.set_token_quota(quota)
    with pytest.raises(error):
        fake.set_token_quota(quota, client_id="client-a")
    with pytest.raises(error):
        FakeGetpaid(token_quota=quota)
    assert fake.token_quota("client-a") == {"per_hour": 3}  # unchanged


@pytest.mark.parametrize(
    ("limit", "window", "error", "message"),
    [
        (-1, 60, ValueError, "token rate limit must be >= 0, got -1"),
        (10, 0, ValueError, "token rate limit window must be >= 1, got 0"),
        ("10", 60, TypeError, "token rate limit must be an int, not str"),
        (10, 0.5, TypeError, "token rate limit window must be an int, not float"),
    ],
)
def test_bad_rate_limit_is_refused_clearly(
    fake: FakeGetpaid, limit: Any, window: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match="^" + message):
        fake.set_token_rate_limit(limit, window=window)
    with pytest.raises(error, match="^" + message):
        FakeGetpaid(token_rate_limit=limit, token_rate_limit_window=window)
    assert fake.token_rate_limit_usage() == 0


@pytest.mark.parametrize(
    ("headers", "error", "message"),
    [
        ({"X-Bad": "a\r\nInjected: 1"}, ValueError, "header 'X-Bad': value must not contain CR"),
        ({"X-Bad": "nul\x00"}, ValueError, "header 'X-Bad': value must not contain CR, LF or NUL"),
        ({"Bad Name": "x"}, ValueError, "invalid header name 'Bad Name'"),
        ({"": "x"}, ValueError, "invalid header name ''"),
        ({"X-Num": 3}, TypeError, "header 'X-Num': value must be a str, not int"),
        ({"X-Uni": "€"}, ValueError, "header 'X-Uni': value must be latin-1 encodable"),
        (["X-Only-Name"], TypeError, "token response headers must be \\(name, value\\) pairs"),
    ],
)
def test_bad_raw_headers_are_refused_clearly(
    fake: FakeGetpaid, headers: Any, error: type[Exception], message: str
) -> None:
    fake.set_token_response_headers({"X-Kept": "1"})
    with pytest.raises(error, match="^" + message):
        fake.set_token_response_headers(headers)
    with pytest.raises(error):
        FakeGetpaid(token_response_headers=headers)
    assert post_token(fake).headers["X-Kept"] == "1"  # the old headers stay


# --------------------------------------------------------------------------- the docs


def _docs_blocks() -> list[str]:
    """The python code blocks of docs/testing.rst's quota sections, in order."""
    text = (REPO_ROOT / "docs" / "testing.rst").read_text()
    section = text[text.index(".. _fake-quota:") : text.index("\nCounters\n~~~")]
    blocks = []
    for chunk in section.split(".. code-block:: python\n")[1:]:
        lines = []
        for line in chunk.splitlines():
            if line.strip() and not line.startswith("    "):
                break
            lines.append(line)
        blocks.append(textwrap.dedent("\n".join(lines)))
    return blocks


def test_the_docs_examples_run() -> None:
    setup, raw_headers = _docs_blocks()
    exec(compile(setup, "docs/testing.rst", "exec"), {})  # noqa: S102
    with FakeGetpaid() as fake:
        fake.register_client("client-a", "secret-a")
        exec(compile(raw_headers, "docs/testing.rst", "exec"), {"fake": fake})  # noqa: S102
        response = post_token(fake)
    assert response.headers["Auth0-Client-Quota-Limit"] == "b=per_hour;q=ten;r=;t=-1, "
    assert response.headers["x-ratelimit-reset"] == "soon"
