"""``manage.py getpaid_refresh``: renew soon-due tokens of recently used credentials.

Run it every few minutes (cron, a scheduler): tenants in use find a valid token in the
cache, and idle tenants cost no token request (Auth0 counts every token against the
client's quota). Selection, windows and statuses: :mod:`django_getpaid_auth.refresh`.

Exit status: 0 nothing failed (also when nothing was due or nothing is configured),
1 at least one refresh failed, 2 usage or configuration error (bad option, unknown tenant
key, a named tenant without an active credential, no or invalid encryption key).

``--json`` writes exactly one JSON document to stdout (nothing else goes to stdout)::

    {
      "ok": bool,              # true when no refresh failed
      "selected": int,         # active credentials looked at
      "refreshed": int,        # a new token is cached now
      "fresh": int,            # used recently, token not due
      "idle": int,             # not used within --used-within (or never): skipped
      "failed": int,
      "due_within": float,     # the windows used, in seconds
      "used_within": float,
      "duration_ms": float,    # wall time of the whole run
      "results": [             # sorted by tenant key, environment, credential id
        {
          "credential_id": int,
          "tenant": str,              # str(tenant)
          "tenant_key": str,          # value of GETPAID_AUTH["TENANT_KEY_FIELD"]
          "environment": str,         # "live" | "sandbox"
          "client_id": str,           # masked, e.g. "abcd…wxyz"
          "status": str,              # "refreshed" | "fresh" | "idle" | "failed"
          "last_used": str | null,    # ISO 8601; null: no use recorded
          "expires_at": str | null,   # ISO 8601: the cached token's (the new one's if
                                      # refreshed); null: none cached
          "error": str | null,        # scrubbed: never a secret or a token
          "error_type": str | null    # exception class, e.g. "InvalidClientError"
        }
      ]
    }

Times are ISO 8601 in UTC to the second (``2026-05-04T12:00:00+00:00``), as in
``getpaid_check --json``.

On exit status 2 nothing is written to stdout; the reason goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_getpaid_auth import clock, refresh
from django_getpaid_auth.exceptions import printable

from ._base import USAGE_ERROR, GetpaidCommand

REFRESH_FAILED = 1


def _seconds(value: str) -> float:
    try:
        return refresh.seconds("the value", value)
    except refresh.SelectionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Command(GetpaidCommand):
    help = (
        "Renew, through the normal single flight, the getpaid tokens of active credentials "
        "that were used recently and whose token expires soon or is missing; idle "
        "credentials are skipped and cost no token request. Run it every 5 minutes. "
        "Exit status 0 = nothing failed, 1 = a refresh failed, 2 = usage or configuration "
        'error. --json writes one document: {"ok", "selected", "refreshed", "fresh", '
        '"idle", "failed", "due_within", "used_within", "duration_ms", "results": [...]} '
        "(see the module docstring for every field). Secrets and tokens are never printed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--due-within",
            type=_seconds,
            default=refresh.DEFAULT_DUE_WITHIN,
            metavar="SECONDS",
            help=(
                "Renew tokens that expire within SECONDS, or that are missing (default "
                f"{refresh.DEFAULT_DUE_WITHIN:.0f}: twice a 5-minute schedule, so a used "
                "tenant's token is renewed before it expires)."
            ),
        )
        parser.add_argument(
            "--used-within",
            type=_seconds,
            default=refresh.DEFAULT_USED_WITHIN,
            metavar="SECONDS",
            help=(
                "Only credentials used (get_token/get_session) within SECONDS (default "
                f"{refresh.DEFAULT_USED_WITHIN:.0f}, an hour); others are idle and skipped. "
                "Use is recorded at most once a minute per process."
            ),
        )
        self.add_selection_arguments(parser)
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Write one JSON document to stdout (shape in the command's docstring).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.require_encryption_key()
        try:
            # call_command(...) bypasses argparse types and choices: run() validates again.
            report = refresh.run(
                tenants=options.get("tenants") or [],
                environment=options.get("environment"),
                due_within=options.get("due_within", refresh.DEFAULT_DUE_WITHIN),
                used_within=options.get("used_within", refresh.DEFAULT_USED_WITHIN),
            )
        except refresh.SelectionError as exc:
            raise CommandError(str(exc), returncode=USAGE_ERROR) from None

        if options.get("as_json"):
            # ensure_ascii: nothing in a tenant name can rewrite the terminal.
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self._write_table(report, options.get("verbosity", 1))
        failed = report.count(refresh.FAILED)
        if failed:
            raise CommandError(
                f"{failed} of {len(report.results)} getpaid token refresh(es) failed.",
                returncode=REFRESH_FAILED,
            )

    def _write_table(self, report: refresh.RefreshReport, verbosity: int) -> None:
        if verbosity >= 1 and report.results:
            now = clock.now()
            header = ["STATUS", "TENANT", "ENV", "CLIENT", "LAST USED", "EXPIRES", "ERROR"]
            rows = [
                [
                    r.status.upper(),
                    printable(r.tenant_key),
                    printable(r.environment),
                    printable(r.client_id),
                    _ago(r.last_used),
                    _in(r.expires_at, now),
                    printable(f"{r.error_type}: {r.error}" if r.error_type else ""),
                ]
                for r in report.results
            ]
            widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
            self.stdout.write(_line(header, widths))
            for r, row in zip(report.results, rows, strict=True):
                status = row[0].ljust(widths[0])
                style = {
                    refresh.REFRESHED: self.style.SUCCESS,
                    refresh.FAILED: self.style.ERROR,
                }.get(r.status)
                self.stdout.write(
                    (style(status) if style else status) + "  " + _line(row[1:], widths[1:])
                )
            self.stdout.write("")
        counts = ", ".join(f"{report.count(s)} {s}" for s in refresh.STATUSES)
        summary = (
            f"{len(report.results)} credential(s): {counts} in {report.duration:.1f}s "
            f"(due within {report.due_within:.0f}s, used within {report.used_within:.0f}s)"
        )
        self.stdout.write((self.style.ERROR if not report.ok else self.style.SUCCESS)(summary))


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _ago(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return f"{_duration(time.time() - epoch)} ago"  # recorded in wall-clock time


def _in(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    left = epoch - now
    return f"in {_duration(left)}" if left >= 0 else f"{_duration(-left)} ago"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
