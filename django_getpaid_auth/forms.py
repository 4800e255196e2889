"""Admin forms for ``ClientCredential``: a write-only secret and scope checkboxes.

The model field ``client_secret`` is deliberately *not* a form field: a form never
renders the stored secret (not even encrypted), and ``full_clean`` never decrypts it,
so a credential whose key was rotated away still opens and saves.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.utils import formats, timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from .models import ClientCredential
from .scopes import KNOWN_SCOPES, join_scopes, split_scopes, unknown_scopes, validate_scopes

SECRET_FIELD = "new_client_secret"
#: How the secret field is named in admin history ("Changed client secret.").
SECRET_LOG_LABEL = "client secret"


def known_scope_choices() -> list[tuple[str, str]]:
    return [(scope, f"{scope} — {description}") for scope, description in KNOWN_SCOPES.items()]


class ClientCredentialForm(forms.ModelForm):
    """Create or edit a credential; the secret can be replaced but never read back."""

    new_client_secret = forms.CharField(
        label=_("Client secret"),
        required=False,
        strip=True,
        # new-password: browsers must not autofill the admin's own login password here.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    known_scopes = forms.MultipleChoiceField(
        label=_("Scopes"),
        required=False,
        choices=known_scope_choices,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Scopes getpaid publishes. Request only what this tenant needs."),
    )
    other_scopes = forms.CharField(
        label=_("Other scopes"),
        required=False,
        help_text=_(
            "Further scopes, space-separated, each resource:read or resource:read_write. "
            "Scopes getpaid does not publish are accepted with a warning."
        ),
    )

    class Meta:
        model = ClientCredential
        fields = ["tenant", "environment", "client_id", "is_active"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unknown_scopes: list[str] = []
        if not self.instance._state.adding:
            current = self.instance.scope_list
            self.initial.setdefault("known_scopes", [s for s in current if s in KNOWN_SCOPES])
            self.initial.setdefault(
                "other_scopes", join_scopes(s for s in current if s not in KNOWN_SCOPES)
            )
        if SECRET_FIELD in self.fields:
            self.fields[SECRET_FIELD].help_text = self._secret_help_text()

    def _secret_help_text(self) -> str:
        if self.instance._state.adding or not self.instance.secret_is_stored():
            return str(_("Required. Stored encrypted and never shown again."))
        changed = self.instance.secret_changed_at
        if changed is None:
            return str(_("Write-only: leave blank to keep the stored secret."))
        return str(
            _("Write-only: leave blank to keep the stored secret (last changed %(when)s).")
            % {"when": formats.localize(timezone.localtime(changed))}
        )

    def clean_other_scopes(self) -> list[str]:
        value = self.cleaned_data.get("other_scopes") or ""
        validate_scopes(value)
        return split_scopes(value)

    @sensitive_variables()
    def clean(self) -> dict[str, Any]:
        # ModelForm.clean() returns cleaned_data; django-stubs types BaseForm.clean() Optional.
        cleaned = cast("dict[str, Any]", super().clean())
        missing = SECRET_FIELD in self.fields and not cleaned.get(SECRET_FIELD)
        if missing and (self.instance._state.adding or not self.instance.secret_is_stored()):
            self.add_error(SECRET_FIELD, _("Enter the client secret."))
        return cleaned

    def requested_scopes(self) -> list[str] | None:
        """The combined scope list, or None when the scope fields did not validate."""
        if "known_scopes" not in self.fields or "other_scopes" not in self.fields:
            return None
        if "known_scopes" not in self.cleaned_data or "other_scopes" not in self.cleaned_data:
            return None
        chosen = set(self.cleaned_data["known_scopes"])
        known = [s for s in KNOWN_SCOPES if s in chosen]
        return split_scopes([*known, *self.cleaned_data["other_scopes"]])

    #: Validate the one-active-credential constraint in this form (see below).
    validates_active_constraint = True

    def _get_validation_exclusions(self) -> Any:
        # The constraint is on the generated ``active_environment``, never a form field,
        # so Django would skip it; it can be validated from tenant, environment and
        # is_active (Django skips it by itself when one of those is excluded).
        exclude = super()._get_validation_exclusions()  # type: ignore[misc]  # private, unstubbed
        if self.validates_active_constraint:
            exclude.discard("active_environment")
        return exclude

    def _post_clean(self) -> None:
        # Written before the model's own validation so constraints see the final values.
        scopes = self.requested_scopes()
        if scopes is not None:
            self.instance.scopes = join_scopes(scopes)
            self.unknown_scopes = unknown_scopes(scopes)
        super()._post_clean()  # type: ignore[misc]  # private Django API, not in django-stubs

    @property
    def secret_changed(self) -> bool:
        return bool(self.cleaned_data.get(SECRET_FIELD)) if hasattr(self, "cleaned_data") else False

    @sensitive_variables()
    def save(self, commit: bool = True) -> ClientCredential:
        secret = self.cleaned_data.get(SECRET_FIELD)
        if secret:
            self.instance.client_secret = secret
        return super().save(commit=commit)


class InlineClientCredentialForm(ClientCredentialForm):
    """For the tenant page: the client ID is entered here but shown masked once saved.

    Existing rows of the inline are read-only (edited on their own page), so a
    differently named field lets the read-only display show ``mask(client_id)``
    instead of the model field's full value.
    """

    new_client_id = forms.CharField(label=_("Client ID"), max_length=255)
    # A model formset compares only form fields across its rows, so it would see every
    # row as (tenant,) and call them duplicates: ClientCredentialInlineFormSet checks
    # the rule across the rows instead.
    validates_active_constraint = False

    class Meta:
        model = ClientCredential
        fields = ["environment", "is_active"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance._state.adding:
            self.initial.setdefault("new_client_id", self.instance.client_id)

    def _post_clean(self) -> None:
        if self.cleaned_data.get("new_client_id"):
            self.instance.client_id = self.cleaned_data["new_client_id"]
        super()._post_clean()


class ClientCredentialInlineFormSet(BaseInlineFormSet):
    """Reports two active credentials for one environment as a form error, not a 500.

    Model validation skips the conditional unique constraint in inlines (the tenant
    foreign key is excluded from per-form validation), so it is checked here.
    """

    def clean(self) -> None:
        super().clean()
        deleted = {
            form.instance.pk
            for form in self.forms
            if form.instance.pk is not None and self._should_delete_form(form)  # type: ignore[attr-defined]  # private API
        }
        kept = [
            form
            for form in self.forms
            if form.has_changed()
            and not self._should_delete_form(form)  # type: ignore[attr-defined]  # private API
            and hasattr(form, "cleaned_data")
        ]
        taken: set[str | None] = set()
        if self.instance.pk is not None:
            existing = ClientCredential.objects.filter(tenant=self.instance, is_active=True)
            changed_pks = {form.instance.pk for form in kept if form.instance.pk is not None}
            taken = set(
                existing.exclude(pk__in=deleted | changed_pks).values_list("environment", flat=True)
            )
        for form in kept:
            if not form.cleaned_data.get("is_active"):
                continue
            environment = form.cleaned_data.get("environment")
            if environment in taken:
                raise ValidationError(
                    _("This tenant already has an active credential for %(environment)s."),
                    code="one_active_credential",
                    params={"environment": environment},
                )
            taken.add(environment)
