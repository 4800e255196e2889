"""Settings for the django-getpaid-auth example project, read from the environment.

Every deployment-specific value comes from an environment variable (or
``example_project/.env``), parsed by django-environ; ``.env.example`` lists them all.
DEBUG defaults to True here, because this project is a local demo, not a template for
production defaults.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import environ
from cryptography.fernet import Fernet

BASE_DIR = Path(__file__).resolve().parent.parent  # example_project/

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    # Real environment variables win over the file (read_env only sets missing ones).
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG: bool = env.bool("DEBUG", default=True)

# Outside DEBUG a real secret is required: env.str raises ImproperlyConfigured if unset.
SECRET_KEY: str = (
    env.str("SECRET_KEY", default="django-insecure-example-project-only")
    if DEBUG
    else env.str("SECRET_KEY")
)

ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_getpaid_auth",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo_site.urls"
WSGI_APPLICATION = "demo_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}

# Tokens live in this cache. LocMem is per process (fine for the one-process demo);
# with several workers use Redis, e.g. CACHE_URL=redis://127.0.0.1:6379/1, so all
# workers share one token per tenant.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "shop:payments"
LOGOUT_REDIRECT_URL = "login"


def _demo_encryption_key(path: Path) -> str:
    """Read the demo's local Fernet key, creating it on first use (owner-only, never committed).

    A file rather than something derived from SECRET_KEY: rotating SECRET_KEY must never
    make stored client secrets unreadable.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key.decode("ascii")


DEMO_KEY_FILE = BASE_DIR / ".demo-key"
GETPAID_ENCRYPTION_KEYS: list[str] = env.list("GETPAID_ENCRYPTION_KEYS", default=[])
if not GETPAID_ENCRYPTION_KEYS and DEBUG:
    GETPAID_ENCRYPTION_KEYS = [_demo_encryption_key(DEMO_KEY_FILE)]
    sys.stderr.write(
        f"Notice: GETPAID_ENCRYPTION_KEYS is not set; DEBUG is on, so client secrets are "
        f"encrypted with the local demo key in {DEMO_KEY_FILE}. Set GETPAID_ENCRYPTION_KEYS "
        "for anything but a local demo.\n"
    )
# Without DEBUG and without keys, the list stays empty and the package's system check
# (django_getpaid_auth.E001) stops the project from starting.

# The package's built-in tenant model. Set explicitly (like AUTH_USER_MODEL) because the
# model is swappable: makemigrations for an app with a ForeignKey to it needs the setting.
GETPAID_AUTH_TENANT_MODEL = "django_getpaid_auth.Tenant"

GETPAID_AUTH = {
    "ENCRYPTION_KEYS": GETPAID_ENCRYPTION_KEYS,
    "TOKEN_URL": env.str("GETPAID_TOKEN_URL", default="https://auth.getpaid.io/oauth/token"),
    "ENVIRONMENTS": {
        # AUDIENCE keeps the package default; only where requests go is configurable.
        "live": {"API_URL": env.str("GETPAID_LIVE_API_URL", default="https://api.getpaid.io")},
        "sandbox": {
            "API_URL": env.str("GETPAID_SANDBOX_API_URL", default="https://api.sandbox.getpaid.io")
        },
    },
}
