"""``refresh_due_tokens``: ``manage.py getpaid_refresh`` as a ``django.tasks`` task.

Needs Django 6.0 or later (``django.tasks``); on older versions importing this module
raises ImportError, and nothing else in the package imports it. Schedule it (every 5
minutes) with whatever runs your task backend's workers; see the "Quota, usage and token
warming" documentation page.

The task returns the ``getpaid_refresh --json`` document (JSON-serialisable, as task
results must be). A failed refresh does not fail the task: ``result.return_value["ok"]``
is False, its entry says why, and ``django_getpaid_auth.refresh`` logs a WARNING for it.
A bad argument (negative window, unknown tenant, a tenant key that is neither a string
nor an integer) raises ``ValueError`` (``refresh.SelectionError``); a missing or
invalid encryption key raises ``ImproperlyConfigured``: the task then fails.
"""

from __future__ import annotations

from typing import Any

import django

try:
    from django.tasks import task
except ImportError as exc:  # Django < 6.0
    raise ImportError(
        "django_getpaid_auth.tasks needs Django 6.0 or later (django.tasks); this is "
        f"Django {django.get_version()}. Schedule `manage.py getpaid_refresh` instead."
    ) from exc

from . import crypto, refresh

__all__ = ["refresh_due_tokens"]


@task
def refresh_due_tokens(
    due_within: float = refresh.DEFAULT_DUE_WITHIN,
    used_within: float = refresh.DEFAULT_USED_WITHIN,
    tenants: list[str | int] | str | int | None = None,
    environment: str | None = None,
) -> dict[str, Any]:
    """Renew soon-due tokens of recently used credentials; idle ones cost no request."""
    crypto.get_fernet()  # no or invalid key: ImproperlyConfigured before any cache read
    report = refresh.run(
        tenants=[tenants] if isinstance(tenants, str | int) else (tenants or ()),
        environment=environment,
        due_within=due_within,
        used_within=used_within,
    )
    return report.as_dict()
