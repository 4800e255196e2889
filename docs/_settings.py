"""Minimal Django settings for building the docs: autodoc imports the package's modules,
and some of them need the app registry. Nothing here talks to a database or a network."""

SECRET_KEY = "docs-only-not-secret"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_getpaid_auth",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
GETPAID_AUTH = {
    # A dummy Fernet key (32 zero bytes, url-safe base64): encrypts nothing real.
    "ENCRYPTION_KEYS": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],
}
