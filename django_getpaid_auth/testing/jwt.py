"""Minimal JWT (JWS compact) helpers for the test doubles.

Standard library only, so the fake server and the ``responses`` helper need no
third-party JWT package. Only HS256 (and, for building deliberately unsigned
tokens, ``none``) is supported: that is all the fakes issue or verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DUMMY_KEY",
    "InvalidTokenError",
    "b64url_decode",
    "b64url_encode",
    "decode_jwt",
    "make_jwt",
]

#: Key used when a caller wants a well-formed token but does not care who can verify it.
DUMMY_KEY = b"django-getpaid-auth-testing-not-a-secret"


class InvalidTokenError(ValueError):
    """Raised by :func:`decode_jwt` when a token is malformed or its signature is wrong."""


def b64url_encode(data: bytes) -> str:
    """Base64url-encode without padding, as JWS requires."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(data: str) -> bytes:
    """Decode unpadded base64url; raises :class:`InvalidTokenError` on garbage."""
    if not isinstance(data, str):
        raise InvalidTokenError("segment is not a string")
    try:
        raw = data.encode("ascii")
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidTokenError(f"invalid base64url segment: {exc}") from exc


def _key_bytes(key: bytes | str) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def _json_segment(obj: Mapping[str, Any]) -> str:
    return b64url_encode(json.dumps(dict(obj), separators=(",", ":"), sort_keys=True).encode())


def make_jwt(
    claims: Mapping[str, Any],
    key: bytes | str = DUMMY_KEY,
    *,
    alg: str = "HS256",
    kid: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Encode ``claims`` as a compact JWS so tests get realistic-looking access tokens.

    ``alg="HS256"`` signs with ``key``; ``alg="none"`` produces an unsigned token
    (empty signature segment) for tests that only need something JWT-shaped.
    """
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    if headers:
        header.update(headers)
    signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
    if alg == "none":
        return signing_input + "."
    if alg != "HS256":
        raise ValueError(f"unsupported alg {alg!r}: only HS256 and none are implemented")
    signature = hmac.new(_key_bytes(key), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url_encode(signature)}"


def decode_jwt(token: str, key: bytes | str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split and decode a compact JWS into ``(header, claims)``.

    When ``key`` is given the token must be HS256 and its signature must match
    (``alg: none`` is refused, as a real verifier would). Expiry, audience and
    so on are the caller's business.
    """
    if not isinstance(token, str):
        raise InvalidTokenError("token is not a string")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidTokenError("token must have exactly three segments")
    header_b64, claims_b64, signature_b64 = parts
    try:
        header = json.loads(b64url_decode(header_b64))
        claims = json.loads(b64url_decode(claims_b64))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTokenError(f"token segments are not JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidTokenError("token header and claims must be JSON objects")
    if key is not None:
        if header.get("alg") != "HS256":
            raise InvalidTokenError(f"unexpected alg {header.get('alg')!r}")
        expected = hmac.new(
            _key_bytes(key), f"{header_b64}.{claims_b64}".encode("ascii"), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(expected, b64url_decode(signature_b64)):
            raise InvalidTokenError("signature verification failed")
    return header, claims
