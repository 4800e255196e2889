"""What ``getpaid_check`` and ``getpaid_refresh`` share: usage errors exit 2, the
credential selection options and how a bad selection is reported.

A module whose name starts with ``_`` is not a management command.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    SystemCheckError,
)

from django_getpaid_auth import crypto, refresh
from django_getpaid_auth.conf import getpaid_settings
from django_getpaid_auth.exceptions import GetpaidAuthConfigurationError
from django_getpaid_auth.models import ClientCredential, Environment

USAGE_ERROR = 2


class GetpaidCommand(BaseCommand):
    """A command whose usage and configuration errors exit with status 2."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Bad options are usage errors (2) through call_command() too, not Django's default 1.
        # From the command line argparse already prints usage and exits 2.
        if not parser.called_from_command_line:

            def error(message: str) -> Any:
                raise CommandError(f"Error: {message}", returncode=USAGE_ERROR)

            parser.error = error  # type: ignore[method-assign]
        return parser

    def check(self, *args: Any, **kwargs: Any) -> None:
        """System check errors (e.g. no encryption key) are configuration errors: exit 2."""
        try:
            super().check(*args, **kwargs)
        except SystemCheckError as exc:
            raise SystemCheckError(str(exc), returncode=USAGE_ERROR) from None

    def add_selection_arguments(self, parser: CommandParser) -> None:
        """``--tenant KEY`` (repeatable, into ``tenants``) and ``--environment``."""
        parser.add_argument(
            "--tenant",
            action="append",
            dest="tenants",
            metavar="KEY",
            default=[],
            help=f"Only this tenant ({getpaid_settings.TENANT_KEY_FIELD}); repeat for several.",
        )
        parser.add_argument(
            "--environment",
            choices=Environment.values,
            help="Only credentials of this environment.",
        )

    def require_encryption_key(self) -> None:
        """No or an invalid encryption key: a configuration error (2)."""
        try:
            crypto.get_fernet()
        except GetpaidAuthConfigurationError as exc:
            raise CommandError(str(exc), returncode=USAGE_ERROR) from None

    def select(self, options: dict[str, Any]) -> list[ClientCredential]:
        """The active credentials ``--tenant``/``--environment`` select
        (:func:`refresh.select_credentials`); a bad selection is a usage error (2).
        Options given to call_command() skip argparse, so they are validated there."""
        try:
            return refresh.select_credentials(
                options.get("tenants") or [], options.get("environment")
            )
        except refresh.SelectionError as exc:
            raise CommandError(str(exc), returncode=USAGE_ERROR) from None
