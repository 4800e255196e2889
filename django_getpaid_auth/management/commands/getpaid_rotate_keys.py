"""Re-encrypt every stored client secret with the first key of ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from django_getpaid_auth import crypto
from django_getpaid_auth.exceptions import GetpaidAuthConfigurationError
from django_getpaid_auth.fields import Ciphertext
from django_getpaid_auth.models import ClientCredential


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored getpaid client secret with the first key of "
        'GETPAID_AUTH["ENCRYPTION_KEYS"], in one transaction. Then older keys can be removed.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Check every row decrypts; change nothing."
        )

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        try:
            crypto.get_fernet()
        except GetpaidAuthConfigurationError as exc:
            raise CommandError(str(exc), returncode=2) from None
        rotated = 0
        failed: list[str] = []
        with transaction.atomic():
            rows = ClientCredential.objects.select_for_update().values_list("pk", "client_secret")
            for pk, ciphertext in rows:  # the column is NOT NULL
                try:
                    new = crypto.rotate(ciphertext)
                except crypto.InvalidToken:  # wrong key, or not a Fernet token at all
                    failed.append(str(pk))
                    continue
                if not dry_run:
                    ClientCredential.objects.filter(pk=pk).update(client_secret=Ciphertext(new))
                rotated += 1
            if failed:
                transaction.set_rollback(True)
                raise CommandError(
                    f"No configured key decrypts the secret of credential(s) pk="
                    f"{', '.join(failed)}; nothing was changed. Add the missing key to "
                    'GETPAID_AUTH["ENCRYPTION_KEYS"] (after the new first key) and run again; '
                    "a stored value that is not a Fernet token at all (legacy plaintext, "
                    "corrupted data) cannot be decrypted by any key: enter that secret again "
                    "in the admin.",
                    returncode=1,
                )
        verb = "would be re-encrypted" if dry_run else "re-encrypted"
        self.stdout.write(self.style.SUCCESS(f"{rotated} credential secret(s) {verb}."))
