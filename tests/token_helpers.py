"""A scriptable token endpoint for `responses`, on the package's controllable clock."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import responses

from django_getpaid_auth import clock
from django_getpaid_auth.conf import getpaid_settings
from django_getpaid_auth.testing import make_jwt

Answer = tuple[int, dict[str, str], str]


class TokenEndpoint:
    """Counts token requests and answers with a new JWT each time (or a scripted failure)."""

    def __init__(
        self,
        rsps: responses.RequestsMock,
        *,
        expires_in: int = 3600,
        delay: float = 0.0,
        scope: str | None = None,
        jwt_exp_offset: int | None = None,
    ) -> None:
        self.expires_in = expires_in
        self.delay = delay
        self.scope = scope
        self.jwt_exp_offset = jwt_exp_offset
        self.requests: list[Any] = []
        self.issued: list[str] = []
        self.script: list[Answer | Callable[[], Answer]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        rsps.add_callback(responses.POST, getpaid_settings.TOKEN_URL, callback=self._answer)

    @property
    def count(self) -> int:
        return len(self.requests)

    def fail_next(self, *answers: Answer | Callable[[], Answer]) -> None:
        self.script.extend(answers)

    def _answer(self, request: Any) -> Answer:
        with self._lock:
            self.requests.append(request)
            scripted = self.script.pop(0) if self.script else None
            n = next(self._ids)
        if self.delay:
            time.sleep(self.delay)
        if scripted is not None:
            return scripted() if callable(scripted) else scripted
        body = json.loads(request.body) if request.body and request.body[:1] in (b"{", "{") else {}
        now = int(clock.now())
        scope = self.scope if self.scope is not None else body.get("scope", "")
        token = make_jwt(
            {
                "sub": f"{body.get('client_id', 'basic')}@clients",
                "aud": body.get("audience", ""),
                "iat": now,
                "exp": now
                + (self.jwt_exp_offset if self.jwt_exp_offset is not None else self.expires_in),
                "scope": scope,
                "n": n,
            }
        )
        with self._lock:
            self.issued.append(token)
        payload = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": scope,
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(payload)

    def client_ids(self) -> list[str]:
        return [json.loads(r.body).get("client_id") for r in self.requests]


def auth0_error(status: int, error: str, description: str, **headers: str) -> Answer:
    return (
        status,
        {"Content-Type": "application/json", **headers},
        json.dumps({"error": error, "error_description": description}),
    )
