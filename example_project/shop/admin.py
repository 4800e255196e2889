"""Admin for memberships, so tenants can be assigned to users without a shell."""

from __future__ import annotations

from django.contrib import admin

from .models import Membership


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "tenant")
    list_filter = ("tenant",)
    list_select_related = ("user", "tenant")
    search_fields = ("user__username", "tenant__name", "tenant__slug")
    autocomplete_fields = ("user",)
