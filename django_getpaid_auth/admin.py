"""Admin for getpaid client credentials (and the built-in tenant model).

What the admin must never do: show a client secret or a token, in a page, its HTML, a
form error or the history. The secret is write-only (see ``forms.py``); tokens are only
described by their expiry. The list reads every row's cached token state and Auth0 quota
figures in one cache round trip per page (never a token request), and a credential whose
secret cannot be decrypted still lists, opens and reports the problem instead of failing
with a 500.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.utils.translation import override as translation_override

from . import clock, connectivity, crypto, service
from .conf import getpaid_settings
from .exceptions import GetpaidAuthError
from .fields import Ciphertext
from .forms import (
    SECRET_FIELD,
    SECRET_LOG_LABEL,
    ClientCredentialForm,
    ClientCredentialInlineFormSet,
    InlineClientCredentialForm,
)
from .models import ClientCredential, Tenant, get_tenant_model, mask
from .quota import LOW_FRACTION, QuotaBucket, QuotaReport, RateLimit
from .scopes import KNOWN_SCOPES, split_scopes
from .tokens import from_timestamp

logger = logging.getLogger("django_getpaid_auth.admin")

# CSS classes from static/django_getpaid_auth/admin.css (no inline styles: a strict
# Content-Security-Policy may forbid them).
MAX_TESTED_ROWS = 100  # "Test connection" on more rows belongs in getpaid_check
TEST_WORKERS = 8
RED_BADGE = "gpa-badge gpa-badge-red"
GREEN_BADGE = "gpa-badge gpa-badge-green"
GREY_BADGE = "gpa-badge gpa-badge-grey"
ORANGE_BADGE = "gpa-badge gpa-badge-orange"


# --- secret and token state, computed without I/O per row ------------------------------


def secret_problem(credential: ClientCredential) -> str:
    """Why the stored secret is unusable ("" when it decrypts).

    Decrypts the raw ciphertext and discards the plaintext: CPU only, no I/O, so the
    list can flag undecryptable rows without a token request or a query.
    """
    stored = credential.__dict__.get("client_secret")
    if stored is None or stored == "":
        return str(_("no secret stored"))
    if not isinstance(stored, Ciphertext):  # a new plaintext, not saved yet
        return ""
    try:
        crypto.decrypt(str(stored))
    except crypto.InvalidToken:
        return str(_("cannot decrypt: check ENCRYPTION_KEYS"))
    except GetpaidAuthError as exc:  # no key / malformed key configured
        return str(exc)
    return ""


@dataclass(frozen=True)
class TokenState:
    """What the admin shows about a credential's cached token (never the token)."""

    kind: str  # "none", "valid", "expired", "error"
    expires_at: datetime | None = None
    remaining: float | None = None
    refresh_due: bool = False
    error: str = ""
    last_error: str = ""


@dataclass(frozen=True)
class RowState:
    """Everything the admin shows from the cache about one credential."""

    token: TokenState
    cached: service.CachedState | None = None  # None: the row cannot be read (bad secret/config)


def row_states(rows: list[ClientCredential]) -> dict[Any, RowState]:
    """Token state and usage of every row, with ONE cache ``get_many`` for all of them.

    The token store reads the token entries (expiry only, nothing decrypted), the
    failure memory (the last token error, still in its back-off window) and the usage
    figures (quota, requests this hour, last use) together, and treats anything
    malformed in the cache as absent.
    """
    states: dict[Any, RowState] = {}
    snapshots = []
    for row in rows:
        problem = secret_problem(row)
        if problem:
            states[row.pk] = RowState(TokenState("error", error=problem))
            continue
        try:
            snapshots.append(service.snapshot_of(row))
        except GetpaidAuthError as exc:
            states[row.pk] = RowState(TokenState("error", error=str(exc)))
    now = clock.now()
    for pk, cached in service.cached_states(snapshots).items():
        states[pk] = RowState(_token_state(cached, now), cached)
    return states


def _token_state(cached: service.CachedState, now: float) -> TokenState:
    last_error = str(cached.failure) if cached.failure is not None else ""
    if cached.expires_at is None or cached.usable_until is None:
        return TokenState("none", last_error=last_error)
    if now >= cached.usable_until:
        return TokenState("expired", expires_at=from_timestamp(cached.expires_at))
    return TokenState(
        "valid",
        expires_at=from_timestamp(cached.expires_at),
        remaining=cached.expires_at - now,
        refresh_due=cached.refresh_at is not None and now >= cached.refresh_at,
        last_error=last_error,
    )


def row_state_of(obj: ClientCredential) -> RowState:
    """The row's state as the change list computed it, or read alone for this call."""
    state = getattr(obj, "_getpaid_row_state", None)
    return state if isinstance(state, RowState) else row_states([obj])[obj.pk]


def detail_state_of(obj: ClientCredential) -> RowState:
    """The change page's state: read once and kept on the instance, so its read-only
    fields (token, quota, usage) share one cache read."""
    state = getattr(obj, "_getpaid_detail_state", None)
    if not isinstance(state, RowState):
        state = row_states([obj])[obj.pk]
        obj._getpaid_detail_state = state  # type: ignore[attr-defined]
    return state


def format_remaining(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from one hour on)."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def format_moment(moment: datetime) -> str:
    """Exact local time with seconds and zone, for hover titles."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


def render_token_state(state: TokenState) -> SafeString:
    if state.kind == "error":
        return format_html(
            '<span class="{}" title="{}">{}</span>', RED_BADGE, state.error, _short(state.error)
        )
    if state.kind == "expired":
        assert state.expires_at is not None
        return format_html(
            '<span class="{}" title="{}">{}</span>',
            GREY_BADGE,
            gettext("Expired at %(when)s") % {"when": format_moment(state.expires_at)},
            gettext("expired"),
        )
    if state.kind == "valid":
        assert state.expires_at is not None and state.remaining is not None
        label = gettext("expires in %(remaining)s") % {
            "remaining": format_remaining(state.remaining)
        }
        if state.refresh_due:
            label = gettext("%(label)s (refresh due)") % {"label": label}
        return format_html(
            '<span class="{}" title="{}">{}</span>',
            ORANGE_BADGE if state.refresh_due else GREEN_BADGE,
            gettext("Expires at %(when)s") % {"when": format_moment(state.expires_at)},
            label,
        )
    if state.last_error:
        return format_html(
            '<span class="{}" title="{}">{}</span>',
            RED_BADGE,
            state.last_error,
            gettext("last error: %(error)s") % {"error": _short(state.last_error, 60)},
        )
    return format_html('<span class="gpa-muted">{}</span>', gettext("no token"))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- quota and usage (Auth0's figures from the last token answer) -----------------------

QUOTA = "gpa-quota"
QUOTA_LOW = "gpa-quota gpa-quota-low"
QUOTA_STALE = "gpa-quota gpa-quota-stale"
# Shortest window first: the hour's quota runs out before the day's.
_BUCKET_ORDER = {"per_minute": 0, "per_hour": 1, "per_day": 2}


def ordered_buckets(report: QuotaReport) -> list[QuotaBucket]:
    return sorted(report.buckets, key=lambda b: (_BUCKET_ORDER.get(b.name, 3), b.name))


def _moment(epoch: float) -> str:
    return format_moment(from_timestamp(epoch))


def _bucket_line(bucket: QuotaBucket, report: QuotaReport, now: float) -> tuple[str, str, str]:
    """(CSS class, hover title, text) of one bucket: low, current or stale."""
    seen = _moment(report.seen_at)
    if bucket.resets_at <= now:  # the window reset after the figures were seen
        return (
            QUOTA_STALE,
            gettext("Seen at %(seen)s; the window reset at %(reset)s, so these are stale.")
            % {"seen": seen, "reset": _moment(bucket.resets_at)},
            gettext("%(figures)s (stale: reset since seen)") % {"figures": bucket.describe()},
        )
    return (
        QUOTA_LOW if bucket.is_low else QUOTA,
        gettext("Seen at %(seen)s; resets at %(reset)s (in %(remaining)s).")
        % {
            "seen": seen,
            "reset": _moment(bucket.resets_at),
            "remaining": format_remaining(bucket.resets_at - now),
        },
        bucket.describe(),
    )


def _rate_limit_text(rate_limit: RateLimit) -> str:
    return gettext("rate limit: %(remaining)d of %(limit)d left") % {
        "remaining": rate_limit.remaining,
        "limit": rate_limit.limit,
    }


def render_quota(cached: service.CachedState | None, now: float) -> SafeString:
    """The list's quota column: one line per bucket, the hour first; low ones coloured."""
    if cached is None:  # the row cannot be read (its secret or settings are the problem)
        return format_html('<span class="gpa-muted">{}</span>', "—")
    report = cached.usage.quota
    if report is None:
        return format_html(
            '<span class="gpa-muted" title="{}">{}</span>',
            gettext("No quota figures yet: they come with the next token answer."),
            gettext("not seen yet"),
        )
    lines = [_bucket_line(b, report, now) for b in ordered_buckets(report)]
    if not lines and report.rate_limit is not None:  # an answer with only a rate limit
        rate_limit = report.rate_limit
        stale = rate_limit.resets_at is not None and rate_limit.resets_at <= now
        text = _rate_limit_text(rate_limit)
        lines.append(
            (
                QUOTA_STALE if stale else QUOTA,
                gettext("Seen at %(seen)s.") % {"seen": _moment(report.seen_at)},
                gettext("%(figures)s (stale: reset since seen)") % {"figures": text}
                if stale
                else text,
            )
        )
    return format_html_join("", '<span class="{}" title="{}">{}</span>', lines)


def render_quota_buckets(cached: service.CachedState | None, now: float) -> SafeString:
    """The change page: every bucket with remaining/limit and its reset time."""
    report = cached.usage.quota if cached is not None else None
    if report is None or not report.buckets:
        return format_html(
            '<span class="gpa-muted">{}</span>',
            gettext("No quota figures seen yet."),
        )
    rows = []
    for bucket in ordered_buckets(report):
        css, _title, text = _bucket_line(bucket, report, now)
        if bucket.resets_at <= now:
            when = gettext("reset at %(when)s, after these figures were seen") % {
                "when": _moment(bucket.resets_at)
            }
        else:
            when = gettext("resets at %(when)s (in %(remaining)s)") % {
                "when": _moment(bucket.resets_at),
                "remaining": format_remaining(bucket.resets_at - now),
            }
        low = ""
        if bucket.is_low and bucket.resets_at > now:
            low = gettext("under %(percent)d %% left") % {"percent": round(LOW_FRACTION * 100)}
        rows.append((bucket.name, css, text, bucket.remaining, bucket.limit, when, low))
    return format_html(
        '<table class="gpa-quota-table"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
        "<th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
        gettext("bucket"),
        gettext("figures"),
        gettext("remaining / limit"),
        gettext("reset"),
        gettext("alert"),
        format_html_join(
            "",
            '<tr><td><code>{}</code></td><td><span class="{}">{}</span></td>'
            "<td>{} / {}</td><td>{}</td><td>{}</td></tr>",
            rows,
        ),
    )


def render_rate_limit(cached: service.CachedState | None, now: float) -> SafeString:
    report = cached.usage.quota if cached is not None else None
    rate_limit = report.rate_limit if report is not None else None
    if rate_limit is None:
        return format_html('<span class="gpa-muted">{}</span>', gettext("not seen yet"))
    if rate_limit.resets_at is None:
        reset = gettext("reset time not sent")
    elif rate_limit.resets_at <= now:
        reset = gettext("reset at %(when)s (stale: reset since seen)") % {
            "when": _moment(rate_limit.resets_at)
        }
    else:
        reset = gettext("resets at %(when)s (in %(remaining)s)") % {
            "when": _moment(rate_limit.resets_at),
            "remaining": format_remaining(rate_limit.resets_at - now),
        }
    return format_html(
        "{}",
        gettext("limit %(limit)d, %(remaining)d remaining; %(reset)s")
        % {"limit": rate_limit.limit, "remaining": rate_limit.remaining, "reset": reset},
    )


def _ago(epoch: float, now: float) -> str:
    """``"2025-01-02 10:00:00 UTC (5 minutes ago)"``."""
    if now - epoch < 60:
        return gettext("%(when)s (just now)") % {"when": _moment(epoch)}
    return gettext("%(when)s (%(ago)s ago)") % {
        "when": _moment(epoch),
        "ago": timesince(from_timestamp(epoch), from_timestamp(max(now, epoch))),
    }


def render_quota_seen(cached: service.CachedState | None, now: float) -> SafeString:
    report = cached.usage.quota if cached is not None else None
    if report is None:
        return format_html('<span class="gpa-muted">{}</span>', gettext("never"))
    answer = gettext("answer HTTP %(status)d") % {"status": report.status}
    if report.status >= 400:  # a refusal (429: quota or rate limit used up)
        return format_html(
            '{} · <span class="gpa-bad">{}</span>', _ago(report.seen_at, now), answer
        )
    return format_html("{} · {}", _ago(report.seen_at, now), answer)


def render_requests_this_hour(cached: service.CachedState | None) -> SafeString:
    count = cached.usage.requests_this_hour if cached is not None else None
    if count is None:
        return format_html('<span class="gpa-muted">{}</span>', gettext("none counted"))
    return format_html("{}", count)


def render_last_used(cached: service.CachedState | None, now: float) -> SafeString:
    last_used = cached.usage.last_used if cached is not None else None
    if last_used is None:
        return format_html('<span class="gpa-muted">{}</span>', gettext("not recorded"))
    return format_html("{}", _ago(last_used, now))


# --- list filter ------------------------------------------------------------------------


class HealthFilter(admin.SimpleListFilter):
    """Result of the last connection test: passed, failed or never run."""

    title = _("health")
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("healthy", _("Healthy")),
            ("failing", _("Failing")),
            ("unchecked", _("Not checked")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        if value == "healthy":
            return queryset.filter(last_check_ok=True)
        if value == "failing":
            return queryset.filter(last_check_ok=False)
        if value == "unchecked":
            return queryset.filter(last_check_ok__isnull=True)
        return queryset


# --- shared helpers ---------------------------------------------------------------------


def hide_secret_post_parameters(request: HttpRequest) -> None:
    """Mark the POSTed client secret fields sensitive for Django's error reports.

    Like ``sensitive_post_parameters``, but for every field named ``new_client_secret``,
    prefixed or not (inline rows are ``<prefix>-<n>-new_client_secret``): a 500 while
    saving then e-mails ``ADMINS`` stars instead of the secret (reports with
    ``DEBUG=False``; a ``DEBUG=True`` page shows everything, by Django's design).
    """
    if request.method != "POST":
        return
    names = [
        name for name in request.POST if name == SECRET_FIELD or name.endswith(f"-{SECRET_FIELD}")
    ]
    current = getattr(request, "sensitive_post_parameters", None) or []
    if current == "__ALL__":
        return
    # Django's own decorator sets this attribute too; HttpRequest's stub does not declare it.
    request.sensitive_post_parameters = [  # type: ignore[attr-defined]
        *current,
        *(n for n in names if n not in current),
    ]


def secret_free_change_message(message: list[dict[str, Any]], form: Any) -> list[dict[str, Any]]:
    """Name the secret field "client secret" in history; values are never stored anyway."""
    field = getattr(form, "fields", {}).get(SECRET_FIELD)
    if field is None:
        return message
    with translation_override(None):
        label = str(field.label or SECRET_FIELD)
    for entry in message:
        for detail in entry.values():
            fields = detail.get("fields") if isinstance(detail, dict) else None
            if fields:
                detail["fields"] = [
                    SECRET_LOG_LABEL if name in (label, SECRET_FIELD) else name for name in fields
                ]
    return message


def tenant_search_fields() -> list[str]:
    """``tenant__name`` and ``tenant__<TENANT_KEY_FIELD>``, where the tenant model has them.

    The tenant model is swappable, so its text fields are looked up, not assumed.
    """
    model = get_tenant_model()
    names: list[str] = []
    for name in ("name", getpaid_settings.TENANT_KEY_FIELD):
        if not isinstance(name, str) or not name or name in names:
            continue
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        if isinstance(field, (models.CharField, models.TextField)):
            names.append(name)
    return [f"tenant__{name}" for name in names]


# --- credentials --------------------------------------------------------------------------


class CredentialChangeList(ChangeList):
    """Computes the page's token and usage states in one batch (one cache read), so rows
    render without cache calls."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)  # evaluates (and caches) the page's queryset once
        states = row_states(rows)
        for row in rows:
            row._getpaid_row_state = states.get(row.pk)


class SecretPostParametersHidden(admin.ModelAdmin):
    """Marks the secret fields of the POST as sensitive before anything can fail, so
    Django's error reports never show a secret typed into this admin's pages."""

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        hide_secret_post_parameters(request)
        return super().changeform_view(request, object_id, form_url, extra_context)


@admin.register(ClientCredential)
class ClientCredentialAdmin(SecretPostParametersHidden):
    class Media:
        css = {"all": ["django_getpaid_auth/admin.css"]}

    form = ClientCredentialForm
    list_display = [
        "tenant",
        "environment_badge",
        "masked_client_id",
        "requested_scopes",
        "granted_scopes_display",
        "is_active",
        "token_status",
        "quota_status",
        "last_check",
    ]
    list_filter = ["environment", "is_active", HealthFilter]
    # Tenant fields are adapted to the (swappable) tenant model in get_search_fields().
    search_fields = ["client_id", "tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]
    readonly_fields = [
        "secret_status",
        "granted_scopes",
        "environment_audience",
        "environment_api_url",
        "token_status_detail",
        "last_check_result",
        "quota_buckets",
        "rate_limit",
        "quota_seen",
        "token_requests_this_hour",
        "last_used",
        "created_at",
        "updated_at",
    ]
    actions = ["test_connection", "clear_cached_token"]
    save_on_top = False

    # --- fieldsets

    def get_fieldsets(self, request: HttpRequest, obj: ClientCredential | None = None) -> Any:
        """Form fields for editors; read-only descriptions for view-only users."""
        editable = obj is None or self.has_change_permission(request, obj)
        secret = [SECRET_FIELD, "secret_status"] if obj is not None else [SECRET_FIELD]
        scopes = ["known_scopes", "other_scopes"]
        if not editable:
            secret, scopes = ["secret_status"], ["requested_scopes"]
        fieldsets: list[tuple[Any, dict[str, Any]]] = [
            (None, {"fields": ["tenant", "environment", "is_active"]}),
            (_("OAuth client"), {"fields": ["client_id", *secret]}),
            (
                _("Scopes"),
                {"fields": [*scopes, "granted_scopes"] if obj is not None else scopes},
            ),
            (
                _("Environment endpoints"),
                {
                    "fields": ["environment_audience", "environment_api_url"],
                    "description": _("Set by GETPAID_AUTH['ENVIRONMENTS'] for the environment."),
                },
            ),
        ]
        if obj is not None:
            fieldsets.append(
                (
                    _("Status"),
                    {
                        "fields": [
                            "token_status_detail",
                            "last_check_result",
                            "created_at",
                            "updated_at",
                        ]
                    },
                )
            )
            fieldsets.append(
                (
                    _("Quota and usage"),
                    {
                        "fields": [
                            "quota_buckets",
                            "rate_limit",
                            "quota_seen",
                            "token_requests_this_hour",
                            "last_used",
                        ],
                        "description": _(
                            "Auth0's figures from the last token answer, shared by every "
                            "tenant using this client; nothing here requests a token."
                        ),
                    },
                )
            )
        return fieldsets

    def get_queryset(self, request: HttpRequest) -> QuerySet[ClientCredential]:
        """With the tenant: titles, history and messages name it without another query."""
        return super().get_queryset(request).select_related("tenant")

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        own = [f for f in self.search_fields if not f.startswith("tenant__")]
        return [*own, *tenant_search_fields()]

    def get_autocomplete_fields(self, request: HttpRequest) -> list[str]:
        """Autocomplete the tenant when its admin can search (thousands of tenants)."""
        tenant_admin = self.admin_site._registry.get(get_tenant_model())
        if tenant_admin is not None and tenant_admin.search_fields:
            return ["tenant"]
        return []

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return CredentialChangeList

    # --- list columns

    @admin.display(description=_("environment"), ordering="environment")
    def environment_badge(self, obj: ClientCredential) -> SafeString:
        label = obj.get_environment_display()
        if obj.environment == "live":
            return format_html('<span class="{}">{}</span>', RED_BADGE, str(label).upper())
        return format_html('<span class="gpa-dim">{}</span>', label)

    @admin.display(description=_("client ID"), ordering="client_id")
    def masked_client_id(self, obj: ClientCredential) -> SafeString:
        return format_html('<code class="gpa-nowrap">{}</code>', mask(obj.client_id))

    @admin.display(description=_("requested scopes"))
    def requested_scopes(self, obj: ClientCredential) -> SafeString:
        scopes = obj.scope_list
        if not scopes:
            return format_html("<em>{}</em>", gettext("none"))
        return format_html_join(
            " ",
            '<code title="{}">{}</code>',
            ((KNOWN_SCOPES.get(s, gettext("not a published getpaid scope")), s) for s in scopes),
        )

    @admin.display(description=_("granted scopes"))
    def granted_scopes_display(self, obj: ClientCredential) -> SafeString:
        granted = obj.granted_scope_list
        missing = [s for s in obj.scope_list if s not in granted] if obj.last_checked_at else []
        parts = format_html_join(" ", "<code>{}</code>", ((s,) for s in granted))
        if missing:
            return format_html(
                '{} <span class="gpa-bad" title="{}">{}</span>',
                parts,
                gettext("Requested but not granted at the last check"),
                gettext("missing: %(scopes)s") % {"scopes": " ".join(missing)},
            )
        return parts if granted else format_html("{}", "—")

    @admin.display(description=_("token"))
    def token_status(self, obj: ClientCredential) -> SafeString:
        return render_token_state(row_state_of(obj).token)

    @admin.display(description=_("quota"))
    def quota_status(self, obj: ClientCredential) -> SafeString:
        return render_quota(row_state_of(obj).cached, clock.now())

    @admin.display(description=_("last check"), ordering="last_checked_at")
    def last_check(self, obj: ClientCredential) -> SafeString:
        if obj.last_checked_at is None:
            return format_html('<span class="gpa-muted">{}</span>', gettext("never"))
        when = formats.localize(timezone.localtime(obj.last_checked_at))
        if obj.last_check_ok:
            return format_html('<span class="gpa-good gpa-nowrap">✔ {}</span>', when)
        return format_html(
            '<span class="gpa-bad" title="{}">✘ {}</span>',
            obj.last_check_error or gettext("failed"),
            when,
        )

    # --- read-only fields of the change page

    @admin.display(description=_("stored secret"))
    def secret_status(self, obj: ClientCredential) -> SafeString:
        problem = secret_problem(obj)
        if problem:
            return format_html('<span class="{}">{}</span>', RED_BADGE, problem)
        if obj.secret_changed_at is None:
            return format_html("{}", gettext("stored (write-only)"))
        return format_html(
            "{}",
            gettext("stored (write-only), last changed %(when)s")
            % {"when": formats.localize(timezone.localtime(obj.secret_changed_at))},
        )

    @admin.display(description=_("audience"))
    def environment_audience(self, obj: ClientCredential | None) -> str:
        return self._per_environment(obj, "AUDIENCE")

    @admin.display(description=_("API URL"))
    def environment_api_url(self, obj: ClientCredential | None) -> str:
        return self._per_environment(obj, "API_URL")

    def _per_environment(self, obj: ClientCredential | None, key: str) -> str:
        if obj is not None and obj.pk is not None:
            value = obj.audience if key == "AUDIENCE" else obj.api_url
            return value or gettext("(environment %(name)s is not configured)") % {
                "name": obj.environment
            }
        return "; ".join(
            f"{name}: {values.get(key, '')}"
            for name, values in getpaid_settings.environments.items()
        )

    @admin.display(description=_("cached token"))
    def token_status_detail(self, obj: ClientCredential) -> SafeString:
        return render_token_state(detail_state_of(obj).token)

    @admin.display(description=_("quota buckets"))
    def quota_buckets(self, obj: ClientCredential) -> SafeString:
        return render_quota_buckets(detail_state_of(obj).cached, clock.now())

    @admin.display(description=_("rate limit"))
    def rate_limit(self, obj: ClientCredential) -> SafeString:
        return render_rate_limit(detail_state_of(obj).cached, clock.now())

    @admin.display(description=_("figures seen"))
    def quota_seen(self, obj: ClientCredential) -> SafeString:
        return render_quota_seen(detail_state_of(obj).cached, clock.now())

    @admin.display(description=_("token requests this hour"))
    def token_requests_this_hour(self, obj: ClientCredential) -> SafeString:
        return render_requests_this_hour(detail_state_of(obj).cached)

    @admin.display(description=_("last used"))
    def last_used(self, obj: ClientCredential) -> SafeString:
        return render_last_used(detail_state_of(obj).cached, clock.now())

    @admin.display(description=_("last check"))
    def last_check_result(self, obj: ClientCredential) -> SafeString:
        if obj.last_checked_at is None:
            return format_html("{}", gettext("never checked"))
        when = formats.localize(timezone.localtime(obj.last_checked_at))
        if obj.last_check_ok:
            return format_html('<span class="gpa-good">✔ {} · {}</span>', gettext("passed"), when)
        return format_html(
            '<span class="gpa-bad">✘ {} · {}</span><br>{}',
            gettext("failed"),
            when,
            obj.last_check_error,
        )

    # --- saving and history

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: ClientCredential | None = None,
    ) -> Any:
        if obj is not None and obj.pk is not None and request.method == "GET":
            problem = secret_problem(obj)
            if problem:
                messages.warning(
                    request,
                    gettext(
                        "The stored client secret of %(credential)s is unusable (%(problem)s). "
                        "Add the key it was encrypted with to GETPAID_AUTH['ENCRYPTION_KEYS'], "
                        "or enter the secret again."
                    )
                    % {"credential": obj, "problem": problem},
                )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(
        self, request: HttpRequest, obj: ClientCredential, form: Any, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        warn_unknown_scopes(request, getattr(form, "unknown_scopes", []))

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> list[dict[str, Any]]:
        return secret_free_change_message(
            super().construct_change_message(request, form, formsets, add), form
        )

    # --- actions

    def has_test_connection_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.test_connection")

    def has_clear_token_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.clear_token")

    @admin.action(
        description=_("Test connection (requests a new token)"), permissions=["test_connection"]
    )
    def test_connection(self, request: HttpRequest, queryset: QuerySet[ClientCredential]) -> None:
        """Request a fresh token per credential (a few at a time) and record the outcome."""
        rows = list(queryset.select_related("tenant")[: MAX_TESTED_ROWS + 1])
        if len(rows) > MAX_TESTED_ROWS:
            self.message_user(
                request,
                gettext(
                    "Select at most %(limit)d credentials to test from here; use "
                    "`manage.py getpaid_check` for more."
                )
                % {"limit": MAX_TESTED_ROWS},
                messages.WARNING,
            )
            return
        # The checks do no database work, so threads are safe; the page waits for the
        # slowest few instead of the sum of all.
        with ThreadPoolExecutor(max_workers=max(1, min(TEST_WORKERS, len(rows)))) as pool:
            results = list(pool.map(self._check, rows))
        connectivity.record_results(results)
        for result in results:
            label = f"{result.tenant} · {result.environment} · {result.client_id}"
            if result.ok:
                self.message_user(
                    request,
                    gettext(
                        "%(credential)s: connection OK, token valid until %(expires)s, "
                        "granted scopes: %(scopes)s."
                    )
                    % {
                        "credential": label,
                        "expires": format_moment(result.expires_at) if result.expires_at else "?",
                        "scopes": " ".join(result.granted_scopes) or gettext("none"),
                    },
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    gettext("%(credential)s: connection failed: %(error)s")
                    % {"credential": label, "error": result.error},
                    messages.ERROR,
                )

    def _check(self, credential: ClientCredential) -> connectivity.CheckResult:
        problem = secret_problem(credential)
        if not problem:
            try:  # check_credential reports getpaid/configuration problems itself
                return connectivity.check_credential(credential, use_cache=False)
            except Exception as exc:  # a bug must not abort the other rows' checks
                logger.exception("Connection test of credential pk=%s crashed", credential.pk)
                problem = gettext("unexpected error (%(type)s); see the server log") % {
                    "type": type(exc).__name__
                }
        return connectivity.result_for(credential, error=problem, error_type="CredentialUnusable")

    @admin.action(description=_("Clear cached token"), permissions=["clear_token"])
    def clear_cached_token(
        self, request: HttpRequest, queryset: QuerySet[ClientCredential]
    ) -> None:
        """Forget the cached token and failure memory; the next use requests a new token."""
        cleared = 0
        for row in queryset.select_related("tenant"):
            try:
                service.forget(service.snapshot_of(row))
            except GetpaidAuthError as exc:
                self.message_user(
                    request,
                    gettext("%(credential)s: %(error)s") % {"credential": row, "error": exc},
                    messages.ERROR,
                )
                continue
            cleared += 1
        if cleared:
            self.message_user(
                request,
                ngettext(
                    "Cleared the cached token of %(count)d credential.",
                    "Cleared the cached tokens of %(count)d credentials.",
                    cleared,
                )
                % {"count": cleared},
                messages.SUCCESS,
            )


def warn_unknown_scopes(request: HttpRequest, unknown: list[str]) -> None:
    if unknown:
        messages.warning(
            request,
            gettext(
                "Saved scopes getpaid does not publish: %(scopes)s. getpaid will refuse "
                "the token request if it does not know them."
            )
            % {"scopes": " ".join(unknown)},
        )


# --- tenants (built-in model only) --------------------------------------------------------


class ClientCredentialInline(admin.TabularInline):
    """A tenant's credentials: added here, edited on their own page (link per row).

    Saved rows are read-only here (client ID masked, no secret); projects with their own
    tenant model can add this inline to their tenant admin.
    """

    class Media:
        css = {"all": ["django_getpaid_auth/admin.css"]}

    model = ClientCredential
    form = InlineClientCredentialForm
    formset = ClientCredentialInlineFormSet
    fields = [
        "environment",
        "new_client_id",
        SECRET_FIELD,
        "is_active",
        "known_scopes",
        "other_scopes",
    ]
    extra = 0
    show_change_link = True
    verbose_name = _("getpaid client credential")
    verbose_name_plural = _("getpaid client credentials")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Existing rows are shown read-only; the change link edits them."""
        return False

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        # Also protects the secret when a project puts this inline in its own tenant admin.
        hide_secret_post_parameters(request)
        return super().get_formset(request, obj, **kwargs)

    # Read-only displays of saved rows (same names as the form fields they stand for).

    @admin.display(description=_("Client ID"))
    def new_client_id(self, obj: ClientCredential) -> str:
        return mask(obj.client_id)

    @admin.display(description=_("Client secret"))
    def new_client_secret(self, obj: ClientCredential) -> str:
        return secret_problem(obj) or gettext("stored (write-only)")

    @admin.display(description=_("Scopes"))
    def known_scopes(self, obj: ClientCredential) -> str:
        return " ".join(s for s in obj.scope_list if s in KNOWN_SCOPES) or "—"

    @admin.display(description=_("Other scopes"))
    def other_scopes(self, obj: ClientCredential) -> str:
        return " ".join(s for s in split_scopes(obj.scopes) if s not in KNOWN_SCOPES) or "—"


class TenantAdmin(SecretPostParametersHidden):
    class Media:
        css = {"all": ["django_getpaid_auth/admin.css"]}

    list_display = ["name", "slug", "credential_count"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [ClientCredentialInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return (
            super().get_queryset(request).annotate(_credential_count=Count("getpaid_credentials"))
        )

    @admin.display(description=_("credentials"), ordering="_credential_count")
    def credential_count(self, obj: Any) -> int:
        return obj._credential_count

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        for inline_form in formset.forms:
            warn_unknown_scopes(request, getattr(inline_form, "unknown_scopes", []))

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> list[dict[str, Any]]:
        message = super().construct_change_message(request, form, formsets, add)
        for formset in formsets or []:
            if formset.forms:
                message = secret_free_change_message(message, formset.forms[0])
        return message


if not Tenant._meta.swapped:
    admin.site.register(Tenant, TenantAdmin)
