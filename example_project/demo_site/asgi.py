"""ASGI entry point, for serving the example with uvicorn (or daphne, hypercorn)::

    uvicorn demo_site.asgi:application --app-dir example_project --workers 2

The payments page is an async view: under ASGI it waits for getpaid without holding a
thread. With several workers, set CACHE_URL to a shared cache (Redis) so that every
worker uses the same token.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")

application = get_asgi_application()
