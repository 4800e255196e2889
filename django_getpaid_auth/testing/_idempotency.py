"""getpaid's idempotency keys, as the fake API honours them.

Why a module of its own: remembering answers per ``Getpaid-Idempotency-Key`` (replay
the first answer to a retry with the same request, refuse the key for a different
request, refuse a second request while the first is still running) is a rule of the
API, independent of routes and of HTTP serving.

Keys are scoped per environment and client (the token's ``azp``), as getpaid scopes
them per platform. Only successful (2xx) answers are remembered: after an error, a
retry with the same key runs again, which is what getpaid asks for after a ``500``.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Answer", "IdempotencyConflict", "IdempotencyStore", "request_fingerprint"]


@dataclass(frozen=True)
class Answer:
    """One API answer as sent: what a replay sends again, trace id included."""

    status: int
    body: object
    content_type: str
    trace_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


class IdempotencyConflict(Exception):
    """The key was used for another request, or its first request is still running."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same": method, path and body (JSON compared by value)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
        payload = b"json:" + canonical.encode("utf-8")
    except (ValueError, UnicodeDecodeError):
        payload = b"raw:" + body
    digest = hashlib.sha256(f"{method} {path}\n".encode() + payload)
    return digest.hexdigest()


_Scope = tuple[str | None, str, str]  # environment, client id, key


class IdempotencyStore:
    """First answers per (environment, client, key); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[_Scope, tuple[str, Answer]] = {}
        self._running: dict[_Scope, str] = {}

    def begin(self, scope: _Scope, fingerprint: str) -> Answer | None:
        """The stored answer to replay, or ``None`` after reserving the key for this request.

        Raises :class:`IdempotencyConflict` when the key belongs to another request or
        its first request has not been answered yet.
        """
        with self._lock:
            stored = self._answers.get(scope)
            if stored is not None:
                if stored[0] != fingerprint:
                    raise IdempotencyConflict(
                        "The Getpaid-Idempotency-Key was already used for a different request"
                    )
                return stored[1]
            if scope in self._running:
                raise IdempotencyConflict(
                    "A request with this Getpaid-Idempotency-Key is still being processed"
                )
            self._running[scope] = fingerprint
            return None

    def finish(self, scope: _Scope, answer: Answer | None) -> None:
        """Release the key; remember ``answer`` for replays when it is a success."""
        with self._lock:
            fingerprint = self._running.pop(scope, None)
            if answer is not None and fingerprint is not None and 200 <= answer.status < 300:
                self._answers[scope] = (fingerprint, answer)

    def clear(self) -> None:
        """Forget every remembered answer."""
        with self._lock:
            self._answers.clear()
