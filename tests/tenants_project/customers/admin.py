"""The tenants in the public site's admin, with their getpaid credentials inline."""

from django.contrib import admin
from django_tenants.admin import TenantAdminMixin

from django_getpaid_auth.admin import ClientCredentialInline

from .models import Client, Domain


@admin.register(Client)
class ClientAdmin(TenantAdminMixin, admin.ModelAdmin):
    list_display = ["name", "schema_name"]
    search_fields = ["name", "schema_name"]
    inlines = [ClientCredentialInline]


admin.site.register(Domain)
