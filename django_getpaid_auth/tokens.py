"""``AccessToken``: an OAuth access token as a value that is safe to print."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


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


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The JWT payload, read WITHOUT verification (it is getpaid's token, not ours to verify)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    segment = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(segment.encode("ascii")))
    except (ValueError, UnicodeError):
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: str) -> float | None:
    claims = jwt_claims(token)
    if not claims:
        return None
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        return float(exp)
    return None
