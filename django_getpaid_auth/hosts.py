"""Where a token may go: the host, port and scheme rules of both HTTP clients.

``GetpaidSession`` (requests) and ``GetpaidAsyncClient`` (httpx) refuse a URL for the
same reasons and with the same messages, so both call this module: one implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .exceptions import ForeignHostError, GetpaidAuthConfigurationError

if TYPE_CHECKING:
    from .service import CredentialSnapshot

__all__ = ["endpoints", "refusal", "require_allowed_host"]

_DEFAULT_PORTS = {"https": 443, "http": 80}
# (API URL, allowed hosts) -> {(hostname, port or None for "the scheme's default")}
_endpoints_cache: dict[tuple[str, frozenset[str]], frozenset[tuple[str, int | None]]] = {}


def require_allowed_host(url: str, snapshot: CredentialSnapshot) -> None:
    """Raise ``ForeignHostError`` unless ``url`` may receive the snapshot's token."""
    reason = refusal(url, snapshot)
    if reason is not None:
        raise ForeignHostError(reason)


def endpoints(snapshot: CredentialSnapshot) -> frozenset[tuple[str, int | None]]:
    """The (host, port) pairs that may receive the token; port None: the scheme's default."""
    key = (snapshot.api_url, snapshot.allowed_hosts)
    found = _endpoints_cache.get(key)
    if found is None:
        parsed = set()
        for entry in snapshot.allowed_hosts:
            parts = urlsplit(f"//{entry}")
            try:
                port = parts.port
            except ValueError:
                raise GetpaidAuthConfigurationError(
                    f"Invalid host {entry!r}: the port must be a number from 0 to 65535. Fix "
                    'GETPAID_AUTH["ALLOWED_API_HOSTS"] or the environment\'s API_URL '
                    f"({snapshot.api_url})."
                ) from None
            parsed.add(((parts.hostname or "").lower(), port))
        found = _endpoints_cache[key] = frozenset(parsed)
    return found


def refusal(url: str, snapshot: CredentialSnapshot) -> str | None:
    """Why ``url`` may not receive the token, or None if it may.

    A host listed without a port (in API_URL or ALLOWED_API_HOSTS) accepts only the
    scheme's default port (443 for https, 80 for http); another port must be listed as
    host:port.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    netloc = parts.netloc.lower()
    if scheme != "https" and scheme != snapshot.api_scheme:
        return (
            f"Refusing to send a getpaid token over {scheme}:// ({netloc}): the API is "
            f"configured as {snapshot.api_scheme}://, so use https or a relative URL."
        )
    allowed_endpoints = endpoints(snapshot)  # (cached) also validates the configured hosts
    if netloc in snapshot.allowed_hosts:
        return None  # listed as is: the host (default port) or host:port (the warm path)
    hostname = (parts.hostname or "").lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    port = parts.port  # both clients refuse an invalid port before auth runs
    if port is None:
        port = default_port
    if (hostname, port) in allowed_endpoints or (
        port == default_port and (hostname, None) in allowed_endpoints
    ):
        return None
    allowed = ", ".join(sorted(snapshot.allowed_hosts))
    if any(host == hostname for host, _ in allowed_endpoints):
        return (
            f"Refusing to send a getpaid token to {scheme}://{netloc}: port {port} is not "
            f"allowed (only {allowed} may receive it; a host without a port means port "
            f"{default_port} for {scheme}). Use a relative URL, or add "
            f'"{hostname}:{port}" to GETPAID_AUTH["ALLOWED_API_HOSTS"].'
        )
    return (
        f"Refusing to send a getpaid token to {scheme}://{netloc}: only {allowed} may "
        "receive it. Use a relative URL, or add the host to "
        'GETPAID_AUTH["ALLOWED_API_HOSTS"].'
    )
