"""``AccessToken``: an OAuth access token as a value that is safe to print."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from django.views.decorators.debug import sensitive_variables

# RFC 6750 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Longest access token accepted (Auth0 JWTs are ~1 KiB; headers beyond 16 KiB are refused
# by many servers anyway).
MAX_TOKEN_LENGTH = 16 * 1024


@dataclass(frozen=True)
class AccessToken:
    """A bearer token with its expiry; ``repr``/``str`` show a fingerprint, never the token."""

    value: str = field(repr=False)
    token_type: str
    expires_at: datetime
    scopes: frozenset[str]
    obtained_at: datetime

    def __repr__(self) -> str:
        return (
            f"AccessToken(type={self.token_type!r}, expires_at={self.expires_at.isoformat()}, "
            f"scopes={sorted(self.scopes)!r}, fingerprint={self.fingerprint!r})"
        )

    __str__ = __repr__

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the token's SHA-256: tells tokens apart in logs."""
        return hashlib.sha256(self.value.encode()).hexdigest()[:12]

    @property
    def authorization(self) -> str:
        return f"Bearer {self.value}"

    @property
    def lifetime(self) -> float:
        return (self.expires_at - self.obtained_at).total_seconds()

    def expires_in(self, now: float) -> float:
        return self.expires_at.timestamp() - now

    def to_payload(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "token_type": self.token_type,
            "expires_at": self.expires_at.timestamp(),
            "scopes": sorted(self.scopes),
            "obtained_at": self.obtained_at.timestamp(),
        }

    @classmethod
    @sensitive_variables()
    def from_payload(cls, data: dict[str, Any]) -> AccessToken:
        return cls(
            value=data["value"],
            token_type=data["token_type"],
            expires_at=from_timestamp(data["expires_at"]),
            scopes=frozenset(data["scopes"]),
            obtained_at=from_timestamp(data["obtained_at"]),
        )


def from_timestamp(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=timezone.utc)


@sensitive_variables()
def is_valid_token_value(value: Any) -> bool:
    """True for a string usable as ``Authorization: Bearer <value>``.

    RFC 6750's ``b64token`` (letters, digits, ``-._~+/``, then optional ``=`` padding), at
    most MAX_TOKEN_LENGTH characters: no whitespace, CR/LF or other header-breaking text.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TOKEN_LENGTH
        and _B64TOKEN.fullmatch(value) is not None
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@sensitive_variables()
def jwt_claims(token: str) -> dict[str, Any] | None:
    """The JWT payload, read WITHOUT verification (it is getpaid's token, not ours to verify).

    Anything that is not a small, well-formed JWT payload object gives ``None``, never an
    exception: the token comes from a server we do not control.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    segment = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(
            base64.urlsafe_b64decode(segment.encode("ascii")), parse_constant=_no_constants
        )
    except (ValueError, UnicodeError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


@sensitive_variables()
def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim as a finite float timestamp, or ``None``."""
    claims = jwt_claims(token)
    if not claims:
        return None
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return None
    try:
        value = float(exp)
    except OverflowError:  # an int beyond float range: no usable expiry
        return None
    return value if math.isfinite(value) else None
