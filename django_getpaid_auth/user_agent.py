"""The package version, and the User-Agent every request of the package sends (token
endpoint and API alike). A base module: importing it imports nothing else of ours."""

from __future__ import annotations

import requests

__version__ = "0.1.0"

USER_AGENT = f"django-getpaid-auth/{__version__} python-requests/{requests.__version__}"
