"""``manage.py demo``: a working multi-tenant getpaid setup on loopback, in one command.

Why a command and not fixtures: the demo needs a running fake getpaid whose clients
match the stored (encrypted) secrets, and the settings of *this* process pointed at
it, so the fake, ``getpaid_check`` and the web server must all live in one process.
Every step is idempotent, so running the demo again in the same checkout just works.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.signals import setting_changed
from django.db import transaction
from django.test import Client
from django.urls import reverse

from django_getpaid_auth.models import ClientCredential, Environment, Tenant
from django_getpaid_auth.testing.fake_getpaid import FakeGetpaid
from shop.models import Membership

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "demo-admin"  # a local demo on loopback; printed below
SCOPES = "payments:read payments:read_write"  # list payments, create test payments
HOST = "127.0.0.1"
DEMO_TOKEN_QUOTA = {"per_hour": 100, "per_day": 1000}


@dataclass(frozen=True)
class DemoTenant:
    slug: str
    name: str
    username: str
    password: str

    @property
    def client_id(self) -> str:
        return f"demo-{self.slug}"


DEMO_TENANTS = (
    DemoTenant("acme", "Acme Corp", "acme-user", "demo-acme"),
    DemoTenant("globex", "Globex Corporation", "globex-user", "demo-globex"),
)


def port_number(value: str) -> int:
    """argparse type: an int in 0..65535."""
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(value)
    return port


class Command(BaseCommand):
    help = (
        "Set up the demo from scratch (migrate, admin, two tenants with sandbox credentials, "
        "one user each), start a fake getpaid on 127.0.0.1 in this process, run "
        "getpaid_check against it, open each demo user's payments page (the async view), "
        "then serve the project (or exit, with --check-only)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check-only",
            action="store_true",
            help="Exit after getpaid_check: 0 when every check passed, non-zero otherwise.",
        )
        parser.add_argument(
            "--port", type=port_number, default=8000, help="Port for the web server (default 8000)."
        )
        parser.add_argument(
            "--fake-port",
            type=port_number,
            default=0,
            help="Port for the fake getpaid (default 0: any free port).",
        )

    def handle(
        self, *args: Any, check_only: bool, port: int, fake_port: int, **options: Any
    ) -> None:
        verbosity = int(options.get("verbosity", 1))
        self.stdout.write(self.style.MIGRATE_HEADING("1/5 Database"))
        call_command("migrate", interactive=False, verbosity=max(verbosity - 1, 0))
        self.stdout.write(f"  migrated {settings.DATABASES['default']['NAME']}")

        self.stdout.write(self.style.MIGRATE_HEADING("2/5 Users, tenants and credentials"))
        secrets_by_client = self._set_up_data()

        self.stdout.write(self.style.MIGRATE_HEADING("3/5 Fake getpaid"))
        fake = self._start_fake(fake_port, secrets_by_client)

        self.stdout.write(self.style.MIGRATE_HEADING("4/5 getpaid_check"))
        check_failed = self._run_check()

        self.stdout.write(self.style.MIGRATE_HEADING("5/5 Payments pages"))
        page_failed = self._check_pages() if check_failed is None else None

        if check_only:
            fake.stop()
            if check_failed is not None:
                raise CommandError(
                    f"Demo check failed (getpaid_check exit code {check_failed.returncode}).",
                    returncode=check_failed.returncode,
                )
            if page_failed is not None:
                raise CommandError(f"Demo check failed ({page_failed}).", returncode=1)
            self.stdout.write(self.style.SUCCESS("Demo check passed."))
            return

        if check_failed is not None or page_failed is not None:
            self.stderr.write(
                self.style.WARNING(
                    "Serving anyway: the payments page will show the error for each tenant."
                )
            )
        self._print_logins(port)
        try:
            # No reloader: it would restart in a new process, without the fake.
            call_command("runserver", f"{HOST}:{port}", use_reloader=False)
        finally:
            fake.stop()

    # ----------------------------------------------------------------- steps
    @transaction.atomic
    def _set_up_data(self) -> dict[str, str]:
        """Create or update the admin, tenants, credentials (new secrets) and users."""
        user_model = get_user_model()
        admin, _ = user_model.objects.get_or_create(username=ADMIN_USERNAME)
        admin.is_staff = admin.is_superuser = admin.is_active = True
        admin.set_password(ADMIN_PASSWORD)
        admin.save()

        secrets_by_client: dict[str, str] = {}
        for demo in DEMO_TENANTS:
            tenant, _ = Tenant.objects.update_or_create(
                slug=demo.slug, defaults={"name": demo.name}
            )
            # A user may have added another active sandbox credential in the admin;
            # deactivate it (with save(), so caches are invalidated) to keep ours the one.
            others = ClientCredential.objects.filter(
                tenant=tenant, environment=Environment.SANDBOX, is_active=True
            ).exclude(client_id=demo.client_id)
            for other in others:
                other.is_active = False
                other.save()
            secret = secrets.token_urlsafe(32)
            ClientCredential.objects.update_or_create(
                tenant=tenant,
                environment=Environment.SANDBOX,
                client_id=demo.client_id,
                defaults={"client_secret": secret, "scopes": SCOPES, "is_active": True},
            )
            secrets_by_client[demo.client_id] = secret

            user, _ = user_model.objects.get_or_create(username=demo.username)
            user.is_active = True
            user.set_password(demo.password)
            user.save()
            Membership.objects.update_or_create(user=user, defaults={"tenant": tenant})
            self.stdout.write(
                f"  tenant {demo.slug!r}: sandbox client {demo.client_id!r} (new secret saved, "
                f"encrypted); user {demo.username!r}"
            )
        self.stdout.write(f"  admin user {ADMIN_USERNAME!r}")
        return secrets_by_client

    def _start_fake(self, port: int, secrets_by_client: dict[str, str]) -> FakeGetpaid:
        """Start the fake in a daemon thread and point this process's settings at it."""
        try:
            # Auth0-like quota headers on every token answer: the admin's quota column and
            # getpaid_check's QUOTA column have figures to show.
            fake = FakeGetpaid(HOST, port, token_quota=DEMO_TOKEN_QUOTA).start()
        except OSError as exc:
            raise CommandError(f"Cannot start the fake getpaid on {HOST}:{port}: {exc}") from exc
        for client_id, secret in secrets_by_client.items():
            fake.register_client(client_id, secret, scopes=SCOPES)
        # Settings were read at startup; replace GETPAID_AUTH for this whole process (the
        # check and the server threads) and send setting_changed, as override_settings
        # does, so the package drops state derived from the old value.
        value = {**(getattr(settings, "GETPAID_AUTH", None) or {}), **fake.getpaid_auth_settings()}
        settings.GETPAID_AUTH = value
        setting_changed.send(sender=type(self), setting="GETPAID_AUTH", value=value, enter=True)
        self.stdout.write(f"  fake getpaid serving on {fake.url} (token URL {fake.token_url})")
        return fake

    def _run_check(self) -> CommandError | None:
        """Run getpaid_check; return its CommandError (with returncode) instead of raising."""
        try:
            call_command("getpaid_check", stdout=self.stdout, stderr=self.stderr)
        except CommandError as exc:
            self.stderr.write(self.style.ERROR(f"getpaid_check failed: {exc}"))
            return exc
        return None

    def _check_pages(self) -> str | None:
        """Open each demo user's payments page (an async view) in this process."""
        user_model = get_user_model()
        for demo in DEMO_TENANTS:
            client = Client(HTTP_HOST=HOST)
            client.force_login(user_model.objects.get(username=demo.username))
            response = client.get(reverse("shop:payments"))
            shown = response.status_code == 200 and b"Latest payments" in response.content
            if not shown:
                message = f"the payments page of {demo.username!r} answered {response.status_code}"
                self.stderr.write(self.style.ERROR(f"  {message}"))
                return message
            self.stdout.write(f"  {demo.username}: payments page OK")
        return None

    def _print_logins(self, port: int) -> None:
        base = f"http://{HOST}:{port}"
        lines = [
            "",
            self.style.SUCCESS("The demo is ready (Ctrl-C stops it):"),
            f"  payments page  {base}/",
            f"  admin          {base}/admin/   login {ADMIN_USERNAME} / {ADMIN_PASSWORD}",
        ]
        lines += [
            f"  {demo.slug:<14} login {demo.username} / {demo.password}" for demo in DEMO_TENANTS
        ]
        lines.append("")
        self.stdout.write("\n".join(lines))
