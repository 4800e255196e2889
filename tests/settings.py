"""Test settings: SQLite + LocMem by default; DATABASE_URL / REDIS_URL switch to real services."""

from __future__ import annotations

import os

import django
import environ

env = environ.Env()

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_getpaid_auth",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

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

DATABASES = {"default": env.db("DATABASE_URL", default="sqlite://:memory:")}
if "sqlite" not in DATABASES["default"]["ENGINE"]:
    # A test database of this run's own: two runs on one server (CI and a developer, or two
    # sessions) must not create and drop the same "test_<name>" under each other.
    DATABASES["default"].setdefault("TEST", {})["NAME"] = (
        f"test_{DATABASES['default']['NAME']}_{os.getpid()}"
    )
if DATABASES["default"].get("ENGINE") == "django.db.backends.mysql":  # MariaDB / MySQL
    # Full Unicode in the test database too (non-ASCII secrets, names), whatever the
    # server's default character set.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("charset", "utf8mb4")
    DATABASES["default"].setdefault("TEST", {}).setdefault("CHARSET", "utf8mb4")

REDIS_URL = env.str("REDIS_URL", default="")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tests"},
}
if REDIS_URL:
    CACHES["default"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "gpa-tests",
    }

STATIC_URL = "/static/"

# Fixed test keys (never use these anywhere else).
TEST_KEY_A = "0Cq5VUJ4SeI4ezhfL8jkchyFMjCs6LvzKRjM8U_cZ0o="
TEST_KEY_B = "yY4cLwydexQmSG5Cb0CuyrnEEk67pkXAO19hiQ-NOxM="

GETPAID_AUTH = {
    "ENCRYPTION_KEYS": [TEST_KEY_A],
    "TOKEN_URL": "https://auth.getpaid.test/oauth/token",
    "ENVIRONMENTS": {
        "live": {"AUDIENCE": "https://api.getpaid.io", "API_URL": "https://api.getpaid.test"},
        "sandbox": {
            "AUDIENCE": "https://api.sandbox.getpaid.io",
            "API_URL": "https://api.sandbox.getpaid.test",
        },
    },
    "RETRY_BACKOFF": 0.01,
    "RETRY_BACKOFF_MAX": 0.05,
    "MAX_RETRY_AFTER": 0.2,
    "WAIT_TIMEOUT": 10.0,
}

SILENCED_SYSTEM_CHECKS = ["django_getpaid_auth.W001"] if not REDIS_URL else []

if django.VERSION >= (6, 1):
    # Django 6.1 replaces EMAIL_BACKEND with MAILERS (the tests send ADMINS error e-mails).
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
