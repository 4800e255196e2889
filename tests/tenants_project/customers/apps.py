from django.apps import AppConfig


class CustomersConfig(AppConfig):
    name = "tests.tenants_project.customers"
    label = "customers"
