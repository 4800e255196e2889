"""A local, in-process stand-in for getpaid's OAuth server and (part of) its API.

Why: the package's tests, its users' tests and the demo must exercise the real
HTTP path (token fetch, caching, 401 refresh, retries on 429/5xx, connection
errors) without touching the internet. The fake mimics Auth0's token endpoint
(error bodies, rate-limit headers) and getpaid's RFC 7807 API errors closely
enough that code passing against it behaves against the real thing.

This module only puts the parts together; each lives in its own module:
:mod:`._http` (serving), :mod:`.token_server` (the token endpoint and its faults),
:mod:`.api` (the API emulation) and :mod:`._payments` (the seeded payments).

Standard library only, so it can be imported without Django or any test tool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django_getpaid_auth.testing._http import Handler
from django_getpaid_auth.testing.api import API_FAULT_KINDS, ApiEmulation
from django_getpaid_auth.testing.token_server import (
    ENVIRONMENT_AUDIENCES,
    FAULT_KINDS,
    KNOWN_SCOPES,
    LIVE_AUDIENCE,
    QUOTA_BUCKETS,
    SANDBOX_AUDIENCE,
    FakeClient,
    FakeTokenServer,
    is_token_path,
)

__all__ = [
    "API_FAULT_KINDS",
    "ENVIRONMENT_AUDIENCES",
    "FAULT_KINDS",
    "KNOWN_SCOPES",
    "LIVE_AUDIENCE",
    "QUOTA_BUCKETS",
    "SANDBOX_AUDIENCE",
    "FakeClient",
    "FakeGetpaid",
]


class FakeGetpaid(FakeTokenServer):
    """Threaded HTTP server faking ``auth.getpaid.io`` and ``api[.sandbox].getpaid.io``.

    Use as a context manager (or ``start()``/``stop()``); register clients, point the
    package at :meth:`getpaid_auth_settings`, inject faults, and inspect counters.
    Token endpoint behaviour comes from
    :class:`~django_getpaid_auth.testing.token_server.FakeTokenServer`; API requests
    (any other path) go to :meth:`_handle_api`, which hands them to ``self.api``, an
    :class:`~django_getpaid_auth.testing.api.ApiEmulation`. Override ``_handle_api``
    in a subclass to observe or replace API answers.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_lifetime: int = 3600,
        token_latency: float = 0.0,
        api_latency: float = 0.0,
        token_quota: Mapping[str, int] | None = None,
        token_rate_limit: int | None = None,
        token_rate_limit_window: int = 60,
        token_response_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        enforce_token_limits: bool = True,
    ) -> None:
        super().__init__(
            host,
            port,
            token_lifetime=token_lifetime,
            token_latency=token_latency,
            token_quota=token_quota,
            token_rate_limit=token_rate_limit,
            token_rate_limit_window=token_rate_limit_window,
            token_response_headers=token_response_headers,
            enforce_token_limits=enforce_token_limits,
        )
        self.api = ApiEmulation(
            self,
            latency=api_latency,
            sleep=self._sleep,
            fault_timeout=lambda: self.fault_timeout_sleep,
        )

    @property
    def api_latency(self) -> float:
        """Seconds each API answer is delayed (settable at any time)."""
        return self.api.latency

    @api_latency.setter
    def api_latency(self, seconds: float) -> None:
        self.api.latency = seconds

    @property
    def api_requests(self) -> list[dict[str, Any]]:
        """Log of API requests: client, method, path, environment, status, trace id,
        idempotency key, ``replayed``, ``fault`` (the fault kind served, or None), time."""
        return self.api.requests

    # ------------------------------------------------------------------ addresses
    def api_url(self, environment: str) -> str:
        """Base URL standing in for the live or sandbox API host."""
        if environment not in ENVIRONMENT_AUDIENCES:
            raise ValueError(f"unknown environment {environment!r}; use 'live' or 'sandbox'")
        return f"{self.url}/{environment}"

    def getpaid_auth_settings(self) -> dict[str, Any]:
        """Fragment to merge into Django's ``GETPAID_AUTH`` setting to target this fake."""
        return {
            "TOKEN_URL": self.token_url,
            "ENVIRONMENTS": {
                env: {"AUDIENCE": audience, "API_URL": self.api_url(env)}
                for env, audience in ENVIRONMENT_AUDIENCES.items()
            },
        }

    # ------------------------------------------------------------------ clients and data
    def register_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        scopes: str | Iterable[str] = KNOWN_SCOPES,
        audiences: str | Iterable[str] = (LIVE_AUDIENCE, SANDBOX_AUDIENCE),
        grant_types: str | Iterable[str] = ("client_credentials",),
    ) -> FakeClient:
        """Create (or replace) a client; new clients get three deterministic demo payments."""
        client = super().register_client(
            client_id, client_secret, scopes=scopes, audiences=audiences, grant_types=grant_types
        )
        self.api.store.seed(client_id)
        return client

    def add_payment(self, client_id: str, payment: Mapping[str, Any]) -> dict[str, Any]:
        """Store a payment visible to ``client_id``; missing fields get spec-shaped defaults."""
        if client_id not in self.clients:
            raise KeyError(f"unknown client {client_id!r}; register_client() it first")
        return self.api.store.add(client_id, payment)

    def payments(self, client_id: str) -> list[dict[str, Any]]:
        """Copies of the payments visible to ``client_id`` (insertion order)."""
        return self.api.store.payments(client_id)

    # ------------------------------------------------------------------ faults
    def fail_next_api_requests(
        self, kind: str, count: int = 1, *, retry_after: int | None = None
    ) -> None:
        """Queue ``count`` faults of ``kind`` for the next API requests (FIFO).

        ``kind`` is one of :data:`API_FAULT_KINDS`: ``"500"``, ``"502_html"``, ``"503"``,
        ``"429"``, ``"reset"``, ``"timeout"`` or ``"commit_then_reset"`` (the request
        takes effect, e.g. a payment is created, then the connection is reset without
        an answer).
        """
        self.api.fail_next_requests(kind, count, retry_after=retry_after)

    def clear_faults(self) -> None:
        """Drop token and API faults that have not been served yet."""
        super().clear_faults()
        self.api.clear_faults()

    # ------------------------------------------------------------------ counters
    def idempotency_keys(self, client_id: str | None = None) -> list[str]:
        """``Getpaid-Idempotency-Key`` of each API request that sent one, in arrival order.

        One entry per attempt: a retry that kept its key repeats it. Per client (the
        token's ``azp``) when ``client_id`` is given; ``reset_counters()`` forgets them.
        """
        return self.api.idempotency_keys(client_id)

    def api_request_count(self, client_id: str | None = None) -> int:
        """Requests to the API (any status), total or per client (the token's ``azp``)."""
        return self.api.request_count(client_id)

    def reset_counters(self) -> None:
        """Forget logged token and API requests (not clients, payments or faults)."""
        super().reset_counters()
        self.api.reset_counters()

    # ------------------------------------------------------------------ HTTP
    def _route(self, handler: Handler, path: str, body: bytes) -> None:
        if is_token_path(path):
            self._handle_token(handler, body)
        else:
            self._handle_api(handler, path, body)

    def _handle_api(self, handler: Handler, path: str, body: bytes) -> None:
        self.api.handle(handler, path, body)
