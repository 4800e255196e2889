"""A django-tenants project, set up the way django-tenants' documentation describes.

Used by tests/test_django_tenants.py, which runs it in subprocesses
(``DJANGO_SETTINGS_MODULE=tests.tenants_project.settings``). Environment:

- ``GPA_TENANTS_DATABASE_URL``: the PostgreSQL database of this run (a throwaway one);
- ``REDIS_URL``: the shared cache;
- ``GPA_TENANTS_CACHE_PREFIX``: keeps runs (and tests) apart in a shared Redis;
- ``GPA_TENANTS_GETPAID``: JSON merged into ``GETPAID_AUTH`` (the fake getpaid's
  TOKEN_URL and ENVIRONMENTS, and per-test timing settings).
"""

from __future__ import annotations

import json
import os

import environ

env = environ.Env()

SECRET_KEY = "tenants-project-tests-only-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = [".tenants.test", "tenants.test"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- django-tenants ---------------------------------------------------------------------

DATABASES = {
    "default": {
        **env.db("GPA_TENANTS_DATABASE_URL"),
        "ENGINE": "django_tenants.postgresql_backend",
    }
}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)

SHARED_APPS = [
    "django_tenants",  # mandatory, first
    "tests.tenants_project.customers",  # the tenant and domain models
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Credentials live in the public schema, next to the tenants they belong to.
    "django_getpaid_auth",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    # ...the apps whose data each tenant has in its own schema
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"

MIDDLEWARE = [
    "django_tenants.middleware.main.TenantMainMiddleware",  # first
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.tenants_project.urls_tenants"  # tenants' sites
PUBLIC_SCHEMA_URLCONF = "tests.tenants_project.urls_public"  # the public site: the admin

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"

# django-tenants' recommended cache: every key prefixed with the current thread's schema.
# django-getpaid-auth's own keys do not depend on it; the setting is left as it is.
# (REVERSE_KEY_FUNCTION is a django-redis option; Django's RedisCache has no use for it.)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env.str("REDIS_URL"),
        "KEY_PREFIX": env.str("GPA_TENANTS_CACHE_PREFIX", default="gpa-tenants"),
        "KEY_FUNCTION": "django_tenants.cache.make_key",
    }
}

# --- django-getpaid-auth ----------------------------------------------------------------

GETPAID_AUTH_TENANT_MODEL = "customers.Client"
GETPAID_AUTH = {
    # A fixed test key (never use it anywhere else).
    "ENCRYPTION_KEYS": ["0Cq5VUJ4SeI4ezhfL8jkchyFMjCs6LvzKRjM8U_cZ0o="],
    "TENANT_KEY_FIELD": "schema_name",
    "TENANT_RESOLVER": "django_getpaid_auth.tenants.django_tenants_tenant",
    "CACHE_KEY_PREFIX": env.str("GPA_TENANTS_CACHE_PREFIX", default="getpaid_auth"),
    **json.loads(os.environ.get("GPA_TENANTS_GETPAID", "{}")),
}
