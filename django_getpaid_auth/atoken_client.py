"""The token request for coroutines: httpx's async transport, token_client's rules.

Everything that decides what the request sends and what an answer means (the body and
Basic credentials, the deadline and retry plan, the size limit and decoding, parsing,
validation, typed errors, scrubbing of the secret) is ``token_client``'s: this module
only moves the bytes with httpx so that a token fetch never blocks the event loop.

One ``httpx.AsyncClient`` per event loop (httpx connections belong to the loop that
opened them), made on first use and kept while the loop lives.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import httpx
from django.views.decorators.debug import sensitive_variables

from . import clock, telemetry, token_client
from .conf import getpaid_settings
from .credentials import CredentialSnapshot
from .exceptions import TokenRequestError
from .quota import QuotaReport
from .tokens import AccessToken
from .user_agent import USER_AGENT

__all__ = ["arequest_token"]

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


_ssl: list[Any] = []


def ssl_context() -> Any:
    """One SSL context per process: loading the CA bundle takes tens of milliseconds, too
    long to repeat on an event loop for every new loop's client."""
    if not _ssl:
        _ssl.append(httpx.create_ssl_context())
    return _ssl[0]


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = httpx.AsyncClient(
            verify=ssl_context(),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
    return client


@sensitive_variables()
async def arequest_token(
    snapshot: CredentialSnapshot, answers: list[QuotaReport | None] | None = None
) -> AccessToken:
    """``token_client.request_token`` without blocking the loop: same retries, bounds and
    ``answers`` (one item per request sent: its quota figures or None)."""
    plan = token_client.RetryPlan()
    if answers is None:
        answers = []
    while True:
        try:
            return await _arequest_once(snapshot, plan.attempt_seconds(), answers)
        except TokenRequestError as exc:
            delay = plan.wait_after(exc)
            if delay is None:
                raise
            await asyncio.sleep(delay)


async def _arequest_once(
    snapshot: CredentialSnapshot, seconds: float, answers: list[QuotaReport | None]
) -> AccessToken:
    if telemetry.ENABLED:
        with telemetry.request_span(
            snapshot.pk, snapshot.environment, token_client.token_server()
        ) as span:
            return await _asend(snapshot, seconds, answers, span)
    return await _asend(snapshot, seconds, answers, None)


@sensitive_variables()
async def _asend(
    snapshot: CredentialSnapshot, seconds: float, answers: list[QuotaReport | None], span: Any
) -> AccessToken:
    context, secret, body, basic = token_client.request_parts(snapshot)
    deadline = token_client._Deadline(seconds)  # expired()/seconds only: no watchdog here
    started = clock.now()
    answers.append(None)
    try:
        outcome = await asyncio.wait_for(
            _exchange(snapshot, context, secret, body, basic, deadline, started, answers, span),
            timeout=max(seconds, 0.001),
        )
    except asyncio.TimeoutError:
        outcome = token_client._transport_error(TimeoutError(), deadline, context)
    if isinstance(outcome, TokenRequestError):
        raise outcome
    return outcome


@sensitive_variables()
async def _exchange(
    snapshot: CredentialSnapshot,
    context: Any,
    secret: token_client._Secret,
    body: Any,
    basic: tuple[str, str] | None,
    deadline: Any,
    started: float,
    answers: list[QuotaReport | None],
    span: Any,
) -> AccessToken | TokenRequestError:
    connect_timeout, read_timeout = getpaid_settings.typed.token_request_timeout
    bounded = max(deadline.seconds, 0.001)
    timeout = httpx.Timeout(min(read_timeout, bounded), connect=min(connect_timeout, bounded))
    try:
        async with _client().stream(
            "POST",
            getpaid_settings.typed.token_url,
            auth=httpx.BasicAuth(*basic) if basic is not None else None,
            timeout=timeout,
            headers=token_client.REQUEST_HEADERS,
            **{token_client.body_kind(): body},
        ) as response:
            token_client.note_answer(answers, response.status_code, response.headers, span)
            token_client.logger.debug(
                "token endpoint answered %s in %.0f ms for tenant=%s environment=%s",
                response.status_code,
                (clock.now() - started) * 1000,
                snapshot.tenant_label,
                snapshot.environment,
            )
            # The body is never a local here: this frame is in the error's traceback.
            return token_client.answer_outcome(
                response.status_code,
                response.headers,
                await _aread_body(response, context, secret),
                snapshot,
                secret,
                context,
                started,
            )
    except httpx.TimeoutException:
        return token_client._transport_error(TimeoutError(), deadline, context)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return token_client._transport_error(exc, deadline, context)


@sensitive_variables()
async def _aread_body(
    response: httpx.Response, context: Any, secret: str
) -> bytes | TokenRequestError:
    """``token_client._read_body`` for httpx: at most MAX_TOKEN_RESPONSE_BYTES, raw bytes
    (decoded here, bounded), refused for a 200 and ignored for an error answer."""
    status = response.status_code
    strict = status == 200
    headers = response.headers
    refusal = token_client.body_refusal(headers, secret)
    if refusal is not None:
        return token_client.refused_body(status, headers, refusal, context, secret, strict=strict)
    limit = getpaid_settings.typed.max_token_response_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            chunks.clear()
            return token_client.refused_body(
                status, headers, token_client.too_large_reason(), context, secret, strict=strict
            )
    data = b"".join(chunks)
    chunks.clear()
    decoded = token_client.decoded_body(data, headers)
    if decoded is None:
        return token_client.refused_body(
            status, headers, token_client.too_large_reason(), context, secret, strict=strict
        )
    return decoded
