"""The tenants (one PostgreSQL schema each) and their domains, as django-tenants expects."""

from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Client(TenantMixin):
    """A tenant; ``schema_name`` (unique) is its django-getpaid-auth key."""

    name = models.CharField(max_length=100)
    created_on = models.DateField(auto_now_add=True)

    auto_create_schema = True

    def __str__(self) -> str:
        return self.name


class Domain(DomainMixin):
    pass
