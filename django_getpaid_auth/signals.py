"""Signals the package sends, for monitoring. Receivers of Django's own signals that keep
caches honest live in ``receivers``.

``token_obtained``: sent with ``tenant``, ``environment``, ``expires_at``, ``duration``
(seconds the token request took), ``credential_id``, ``quota`` (the Auth0 quota and
rate-limit figures of the last answer, a ``quota.QuotaReport``, or None) and
``token_requests_this_hour`` (counted across all processes, or None when unknown).
``token_request_failed``: sent with ``tenant``, ``environment``, ``error`` (a
``TokenRequestError``), ``duration``, ``credential_id``, ``quota`` and
``token_requests_this_hour``.
Neither carries the secret or the token.
"""

from __future__ import annotations

from django.dispatch import Signal

token_obtained = Signal()
token_request_failed = Signal()
