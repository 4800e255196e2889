"""OpenTelemetry spans and metrics (extra "otel"), recorded with the SDK's in-memory readers."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from django_getpaid_auth import get_session, get_token, invalidate_token, service, telemetry
from django_getpaid_auth.exceptions import InvalidClientError
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()


class WhileActive(Sampler):
    """Records spans only during these tests: the global provider outlives this module, and
    the rest of the suite should not fill the in-memory exporter."""

    active = False

    def should_sample(
        self, parent_context, trace_id, name, kind=None, attributes=None, links=None, **kwargs
    ):
        decision = Decision.RECORD_AND_SAMPLE if self.active else Decision.DROP
        return SamplingResult(decision, attributes)

    def get_description(self) -> str:
        return "WhileActive"


SAMPLER = WhileActive()


def _install_providers() -> None:
    """Global providers can be set once per process."""
    provider = TracerProvider(sampler=SAMPLER)
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


_install_providers()


@pytest.fixture
def spans():
    EXPORTER.clear()
    SAMPLER.active = True
    yield EXPORTER
    SAMPLER.active = False
    EXPORTER.clear()


@pytest.fixture
def tenant(fake_getpaid_settings, canary):
    tenant = make_tenant(slug="otel")
    make_credential(tenant, client_id="otel-client", client_secret=canary)
    fake_getpaid_settings.register_client("otel-client", canary)
    return tenant


def token_spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.name == "getpaid_auth.get_token"]


def metric_points(name):
    data = READER.get_metrics_data()
    points = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


def test_cold_then_warm_then_shared_cache(tenant, spans):
    credential_id = service.credential_for(tenant, None).pk
    get_token(tenant)
    get_token(tenant)
    service.clear_memo()  # as another process would: the token is in the shared cache
    get_token(tenant)
    outcomes = [s.attributes["getpaid.token.outcome"] for s in token_spans(spans)]
    assert outcomes == ["fetched", "memo", "shared_cache"]
    first = token_spans(spans)[0]
    assert first.attributes["getpaid.credential_id"] == credential_id
    assert first.attributes["getpaid.environment"] == "sandbox"
    assert first.attributes["getpaid.token.wait_ms"] > 0
    http = [s for s in spans.get_finished_spans() if s.name == "getpaid_auth.token_request"]
    assert len(http) == 1
    assert http[0].kind == trace.SpanKind.CLIENT
    assert http[0].attributes["http.response.status_code"] == 200
    assert http[0].parent is not None and http[0].parent.span_id == first.context.span_id


def total(name, **attributes):
    """The cumulative value of a counter (or count of a histogram) over matching points."""
    points = [
        p
        for p in metric_points(name)
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    ]
    return sum(getattr(p, "count", None) or getattr(p, "value", 0) for p in points)


def test_metrics_count_requests_outcomes_latency_and_quota(tenant, spans, fake_getpaid_settings):
    fake_getpaid_settings.set_token_quota({"per_hour": 10, "per_day": 100})
    before = {
        "success": total("getpaid_auth.token.requests", **{"getpaid.token.result": "success"}),
        "fetched": total("getpaid_auth.token.outcomes", **{"getpaid.token.outcome": "fetched"}),
        "memo": total("getpaid_auth.token.outcomes", **{"getpaid.token.outcome": "memo"}),
        "duration": total("getpaid_auth.token.request.duration"),
    }
    get_token(tenant)
    get_token(tenant)
    after = {
        "success": total("getpaid_auth.token.requests", **{"getpaid.token.result": "success"}),
        "fetched": total("getpaid_auth.token.outcomes", **{"getpaid.token.outcome": "fetched"}),
        "memo": total("getpaid_auth.token.outcomes", **{"getpaid.token.outcome": "memo"}),
        "duration": total("getpaid_auth.token.request.duration"),
    }
    assert {k: after[k] - before[k] for k in before} == {
        "success": 1,
        "fetched": 1,
        "memo": 1,
        "duration": 1,
    }
    credential_id = service.credential_for(tenant, None).pk
    quota = {
        p.attributes["getpaid.quota.bucket"]: p.value
        for p in metric_points("getpaid_auth.quota.remaining")
        if p.attributes["getpaid.credential_id"] == credential_id
    }
    assert quota == {"per_hour": 9, "per_day": 99}


def test_failure_outcome_and_failure_metric(tenant, spans, fake_getpaid_settings):
    fake_getpaid_settings.register_client("otel-client", "another-secret")  # ours is now wrong
    with pytest.raises(InvalidClientError):
        get_token(tenant)
    span = token_spans(spans)[-1]
    assert span.attributes["getpaid.token.outcome"] == "failed"
    assert span.attributes["error.type"] == "InvalidClientError"
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description is None  # no message: it may quote a tenant or server
    assert span.events == ()  # no exception event either
    failures = metric_points("getpaid_auth.token.failures")
    assert any(p.attributes["error.type"] == "InvalidClientError" for p in failures)


def test_threads_that_wait_for_another_fetch_say_so(tenant, spans, fake_getpaid_settings):
    fake_getpaid_settings.token_latency = 0.3
    get_session(tenant)  # credential loaded here (SQLite in-memory is not for threads)
    barrier = threading.Barrier(4)

    def call():
        barrier.wait()
        get_token(tenant)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = sorted(s.attributes["getpaid.token.outcome"] for s in token_spans(spans))
    assert outcomes.count("fetched") == 1
    assert set(outcomes) <= {"fetched", "waited", "memo", "shared_cache"}
    assert "waited" in outcomes


def test_nothing_secret_in_any_span_or_metric(tenant, spans, canary, fake_getpaid_settings):
    token = get_token(tenant)
    invalidate_token(tenant)
    get_token(tenant)
    dumped = [s.to_json() for s in spans.get_finished_spans()]
    data = READER.get_metrics_data()
    dumped.append(data.to_json() if data else "")
    text = "\n".join(dumped)
    assert canary not in text
    assert token.value not in text
    assert token.value[:20] not in text
    for span in spans.get_finished_spans():
        for key in span.attributes:
            assert "secret" not in key and "length" not in key


def test_without_opentelemetry_nothing_is_imported():
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import django; from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['django_getpaid_auth'])\n"
        "django.setup()\n"
        "from django_getpaid_auth import telemetry, service, token_store, token_client\n"
        "assert telemetry.ENABLED is False\n"
        "loaded = [m for m, v in sys.modules.items() if m.startswith('opentelemetry') and v]\n"
        "assert loaded == [], loaded\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_disabled_telemetry_records_nothing(tenant, spans, monkeypatch):
    monkeypatch.setattr(telemetry, "ENABLED", False)
    get_token(tenant)
    assert spans.get_finished_spans() == ()


def test_async_calls_get_the_same_spans(tenant, spans):
    import asyncio

    from django_getpaid_auth import aget_token

    get_session(tenant)  # credential loaded here (SQLite in-memory is not for threads)

    async def main():
        first = await aget_token(tenant)
        second = await aget_token(tenant)
        return first, second

    first, second = asyncio.run(main())
    assert first.value == second.value
    outcomes = [s.attributes["getpaid.token.outcome"] for s in token_spans(spans)]
    assert outcomes == ["fetched", "memo"]
    assert {s.attributes["getpaid.environment"] for s in token_spans(spans)} == {"sandbox"}
    http = [s for s in spans.get_finished_spans() if s.name == "getpaid_auth.token_request"]
    assert [s.attributes["http.response.status_code"] for s in http] == [200]


def test_coroutines_joining_a_fetch_say_they_waited(tenant, spans, fake_getpaid_settings):
    import asyncio

    from django_getpaid_auth import aget_token

    fake_getpaid_settings.token_latency = 0.2
    get_session(tenant)  # credential loaded here (SQLite in-memory is not for threads)

    async def main():
        return await asyncio.gather(*(aget_token(tenant) for _ in range(20)))

    tokens = asyncio.run(main())
    assert len({t.value for t in tokens}) == 1
    outcomes = sorted(s.attributes["getpaid.token.outcome"] for s in token_spans(spans))
    assert outcomes == ["fetched"] + ["waited"] * 19


def test_quota_gauge_forgets_a_bucket_once_its_window_has_reset(spans):
    import time

    from django_getpaid_auth.quota import QuotaBucket

    now = time.time()
    telemetry.quota_seen(
        9001,
        "live",
        [
            QuotaBucket("per_hour", 10, 0, now - 1),  # reset since seen
            QuotaBucket("per_day", 100, 40, now + 600),
        ],
    )
    seen = {
        p.attributes["getpaid.quota.bucket"]: p.value
        for p in metric_points("getpaid_auth.quota.remaining")
        if p.attributes["getpaid.credential_id"] == 9001
    }
    assert seen == {"per_day": 40}
