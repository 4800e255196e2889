"""Sphinx configuration for django-getpaid-auth.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS)]

# autodoc imports the package, and its models need a configured app registry: use the
# tiny settings module next to this file, never a real project's settings.
os.environ["DJANGO_SETTINGS_MODULE"] = "_settings"

import django  # noqa: E402

django.setup()

import django_getpaid_auth  # noqa: E402

project = "django-getpaid-auth"
author = "django-getpaid-auth developers"
copyright = "django-getpaid-auth developers"
release = django_getpaid_auth.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "_settings.py"]
templates_path: list[str] = []

html_theme = "furo"
html_title = f"django-getpaid-auth {release}"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
