"""getpaid's OAuth scopes: the known ones and the rule every scope name follows."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

# From getpaid's OpenAPI spec (components.securitySchemes.OAuth, clientCredentials flow).
KNOWN_SCOPES: dict[str, str] = {
    "accounts:read": "Read accounts and onboarding applications.",
    "accounts:read_write": "Read, create and operate accounts and onboarding applications.",
    "payments:read": "Read payments and checkouts.",
    "payments:read_write": "Read, create and operate payments and checkouts.",
}

SCOPE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*:(read|read_write)$")


def split_scopes(value: str | Iterable[str] | None) -> list[str]:
    """Normalise a space/comma separated string or an iterable to a de-duplicated list."""
    if value is None:
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    seen: dict[str, None] = {}
    for item in items:
        item = item.strip()
        if item:
            seen.setdefault(item, None)
    return list(seen)


def join_scopes(scopes: Iterable[str]) -> str:
    return " ".join(split_scopes(list(scopes)))


def malformed_scopes(scopes: Iterable[str]) -> list[str]:
    return [scope for scope in scopes if not SCOPE_PATTERN.match(scope)]


def unknown_scopes(scopes: Iterable[str]) -> list[str]:
    """Well-formed scopes that getpaid's published list does not contain (allowed, warned)."""
    return [s for s in scopes if SCOPE_PATTERN.match(s) and s not in KNOWN_SCOPES]


def validate_scopes(value: str) -> None:
    """Validator: every scope must look like ``resource:read`` or ``resource:read_write``."""
    bad = malformed_scopes(split_scopes(value))
    if bad:
        raise ValidationError(
            _("Malformed getpaid scope(s): %(scopes)s. Use resource:read or resource:read_write."),
            code="invalid_scope",
            params={"scopes": ", ".join(bad)},
        )
