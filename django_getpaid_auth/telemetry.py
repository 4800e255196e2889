"""OpenTelemetry spans and metrics, when ``opentelemetry-api`` is installed (extra ``otel``).

Without it, ``ENABLED`` is False, callers skip every hook with one test of that flag, and
nothing else is imported. With it, the package emits, through the global tracer and meter
providers the project configures:

* span ``getpaid_auth.get_token`` around getting a token, with ``getpaid.credential_id``,
  ``getpaid.environment``, ``getpaid.token.outcome`` (``memo``: this process's copy;
  ``shared_cache``; ``fetched``; ``waited``: another thread's or process's fetch;
  ``failed``) and ``getpaid.token.wait_ms``;
* span ``getpaid_auth.token_request`` (kind CLIENT) around each HTTP request to the token
  endpoint, with its status code;
* metrics ``getpaid_auth.token.requests`` (by ``getpaid.token.result``: success, failure),
  ``getpaid_auth.token.failures`` (by ``error.type``: the exception class),
  ``getpaid_auth.token.outcomes`` (by outcome), the histogram
  ``getpaid_auth.token.request.duration`` (seconds) and the gauge
  ``getpaid_auth.quota.remaining`` (by credential, environment and bucket).

No span or metric carries a secret, a token or anything derived from them (not even a
length): only ids, environment names, outcomes, durations, status codes and class names.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from .user_agent import __version__

try:
    from opentelemetry import metrics, trace
except ImportError:  # the otel extra is not installed: every hook is skipped
    ENABLED = False
else:
    ENABLED = True

OUTCOMES = ("memo", "shared_cache", "fetched", "waited", "failed")
_NAME = "django_getpaid_auth"


class TokenSpan:
    """What one ``get_token`` call learns on its way down: set by the layers below."""

    __slots__ = ("credential_id", "environment", "outcome")

    def __init__(self) -> None:
        self.outcome = "shared_cache"
        self.credential_id: int | None = None
        self.environment = ""

    def describe(self, credential_id: int, environment: str) -> None:
        """Which credential (known once it is resolved)."""
        self.credential_id, self.environment = credential_id, environment


_current: ContextVar[TokenSpan | None] = ContextVar("getpaid_token_span", default=None)


def set_outcome(outcome: str) -> None:
    """Tell the enclosing ``token_span`` how the token was got (no-op outside one)."""
    span = _current.get()
    if span is not None:
        span.outcome = outcome


class _Instruments:
    """The tracer and instruments, created at first use (after the project's set-up)."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer(_NAME, __version__)
        meter = metrics.get_meter(_NAME, __version__)
        self.requests = meter.create_counter(
            "getpaid_auth.token.requests", unit="{request}", description="Token HTTP requests"
        )
        self.failures = meter.create_counter(
            "getpaid_auth.token.failures",
            unit="{failure}",
            description="Failed token requests, by error class",
        )
        self.outcomes = meter.create_counter(
            "getpaid_auth.token.outcomes",
            unit="{call}",
            description="How get_token calls were served",
        )
        self.duration = meter.create_histogram(
            "getpaid_auth.token.request.duration",
            unit="s",
            description="Duration of token HTTP requests",
        )
        meter.create_observable_gauge(
            "getpaid_auth.quota.remaining",
            callbacks=[_observe_quota],
            unit="{token}",
            description="Auth0 quota left per bucket, as last seen",
        )


_instruments: list[_Instruments] = []
_lock = threading.Lock()


def _get() -> _Instruments:
    if not _instruments:
        with _lock:
            if not _instruments:
                _instruments.append(_Instruments())
    return _instruments[0]


@contextlib.contextmanager
def token_span() -> Iterator[TokenSpan]:
    """Span and outcome metric around getting one token (``describe`` says for whom)."""
    instruments = _get()
    record = TokenSpan()
    reset = _current.set(record)
    started = time.monotonic()
    # Neither the exception nor its message goes on the span (only its class name): a
    # message may quote a tenant or the server.
    with instruments.tracer.start_as_current_span(
        "getpaid_auth.get_token", record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield record
        except BaseException as exc:
            record.outcome = "failed"
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(trace.StatusCode.ERROR)
            raise
        finally:
            _current.reset(reset)
            if record.credential_id is not None:
                span.set_attribute("getpaid.credential_id", record.credential_id)
                span.set_attribute("getpaid.environment", record.environment)
            span.set_attribute("getpaid.token.outcome", record.outcome)
            span.set_attribute("getpaid.token.wait_ms", (time.monotonic() - started) * 1000)
            instruments.outcomes.add(
                1,
                {
                    "getpaid.environment": record.environment,
                    "getpaid.token.outcome": record.outcome,
                },
            )


def memo_served(credential_id: int, environment: str) -> None:
    """The warm path's span and outcome: no context manager, and no span at all while no
    tracer provider is configured (opentelemetry-api installed, no SDK set up)."""
    instruments = _get()
    attributes = {"getpaid.environment": environment, "getpaid.token.outcome": "memo"}
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        span = instruments.tracer.start_span(
            "getpaid_auth.get_token",
            attributes={
                **attributes,
                "getpaid.credential_id": credential_id,
                "getpaid.token.wait_ms": 0.0,
            },
        )
        span.end()
    instruments.outcomes.add(1, attributes)


class RequestSpan:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status: int | None = None


@contextlib.contextmanager
def request_span(credential_id: int, environment: str, server: str) -> Iterator[RequestSpan]:
    """Span, counter and duration around one HTTP request to the token endpoint."""
    instruments = _get()
    record = RequestSpan()
    started = time.monotonic()
    attributes: dict[str, Any] = {
        "getpaid.credential_id": credential_id,
        "getpaid.environment": environment,
        "http.request.method": "POST",
        "server.address": server,
    }
    with instruments.tracer.start_as_current_span(
        "getpaid_auth.token_request",
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield record
        finally:
            ok = record.status == 200
            if record.status is not None:
                span.set_attribute("http.response.status_code", record.status)
            if not ok:
                span.set_status(trace.StatusCode.ERROR)
            labels = {
                "getpaid.environment": environment,
                "getpaid.token.result": "success" if ok else "failure",
            }
            instruments.requests.add(1, labels)
            instruments.duration.record(time.monotonic() - started, labels)


def failed(environment: str, error: BaseException) -> None:
    """Count a failed ``request_token`` call by error class."""
    _get().failures.add(1, {"getpaid.environment": environment, "error.type": type(error).__name__})


# --- quota gauge -------------------------------------------------------------------------------

# (credential id, environment, bucket) -> (remaining, epoch seconds when the bucket resets)
_quota_remaining: dict[tuple[int, str, str], tuple[int, float]] = {}


def quota_seen(credential_id: int, environment: str, buckets: Iterable[Any]) -> None:
    """Keep the remaining figures the gauge reports (``quota.QuotaBucket`` items)."""
    _get()  # the gauge exists once figures do
    for bucket in buckets:
        key = (credential_id, environment, bucket.name)
        _quota_remaining[key] = (bucket.remaining, bucket.resets_at)


def _observe_quota(options: Any) -> Iterator[Any]:
    """Each bucket's last figure until its window resets: after that it no longer holds."""
    now = time.time()
    for key, (remaining, resets_at) in list(_quota_remaining.items()):
        if resets_at <= now:
            _quota_remaining.pop(key, None)
            continue
        credential_id, environment, bucket = key
        yield metrics.Observation(
            remaining,
            {
                "getpaid.credential_id": credential_id,
                "getpaid.environment": environment,
                "getpaid.quota.bucket": bucket,
            },
        )


def reset() -> None:
    """Tests: forget the quota figures (the instruments stay)."""
    _quota_remaining.clear()
