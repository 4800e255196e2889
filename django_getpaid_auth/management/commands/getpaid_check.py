"""``manage.py getpaid_check``: fetch a token for each active credential and report.

Exit status: 0 every check passed, 1 at least one check failed, 2 usage or configuration
error (nothing selected, unknown tenant key, no or invalid encryption key, bad option).

``--json`` writes exactly one JSON document to stdout (nothing else goes to stdout)::

    {
      "ok": bool,             # true when every selected credential passed
      "checked": int,         # number of credentials checked
      "passed": int,
      "failed": int,
      "duration_ms": float,   # wall time of the whole run
      "results": [            # sorted by tenant key, environment, credential id
        {
          "credential_id": int,
          "tenant": str,              # str(tenant)
          "tenant_key": str,          # value of GETPAID_AUTH["TENANT_KEY_FIELD"]
          "environment": str,         # "live" | "sandbox"
          "client_id": str,           # masked, e.g. "abcd…wxyz"
          "ok": bool,
          "latency_ms": float | null, # token fetch time
          "expires_at": str | null,   # ISO 8601
          "requested_scopes": [str],
          "granted_scopes": [str],
          "missing_scopes": [str],    # requested but not granted (a failure)
          "api_status": int | null,   # with --probe-api
          "error": str | null,        # scrubbed: never a secret or a token
          "error_type": str | null,   # exception class, "MissingScopes", "ApiRejected", ...
          "checked_at": str,          # ISO 8601
          # Read from the shared cache after the checks (null: nothing known there).
          "quota": {                  # the last token answer that carried Auth0's
            "seen_at": str,           #   quota or rate-limit headers: when (ISO 8601)
            "status": int,            #   and its HTTP status (200, 429, ...)
            "buckets": [              #   every bucket Auth0 sent, in its order
              {
                "name": str,          # "per_hour" | "per_day" | ...
                "limit": int,         # the quota
                "remaining": int,     # left when the answer came
                "resets_at": str,     # ISO 8601
                "low": bool,          # remaining < 20 % of limit
                "current": bool       # false: the window has reset since (stale figure)
              }
            ],
            "rate_limit": {           # x-ratelimit-*; null when not sent
              "limit": int,
              "remaining": int,
              "resets_at": str | null # ISO 8601
            } | null
          } | null,
          "token_requests_this_hour": int | null,  # this clock hour (UTC), all processes
          "last_used": str | null     # ISO 8601; when the app last used the credential
        }
      ]
    }

Times are ISO 8601 in UTC to the second (``2026-05-04T12:00:00+00:00``), as in
``getpaid_refresh --json``.

Quota figures never change the exit status: a low quota is not a failed check (the
QUOTA column marks it, ``--json`` says ``"low": true``, and the package logs a WARNING).

On exit status 2 nothing is written to stdout; the reason goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_getpaid_auth import clock, connectivity, refresh
from django_getpaid_auth.conf import getpaid_settings
from django_getpaid_auth.connectivity import CheckResult, result_for
from django_getpaid_auth.exceptions import printable
from django_getpaid_auth.models import ClientCredential

from ._base import USAGE_ERROR, GetpaidCommand

DEFAULT_WORKERS = 8
CHECK_FAILED = 1


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


class Command(GetpaidCommand):
    help = (
        "Fetch a getpaid token for every active client credential (or those selected with "
        "--tenant/--environment) and report latency, expiry and granted scopes; with "
        "--probe-api also call the API with the token. Exit status 0 = all passed, "
        "1 = a check failed, 2 = usage or configuration error. --json writes one document: "
        '{"ok", "checked", "passed", "failed", "duration_ms", "results": [...]} '
        "(see the module docstring for every field). In the SCOPES column '!' marks a "
        "requested scope getpaid did not grant. The QUOTA column shows Auth0's token quota "
        "as last seen, remaining/limit per bucket still in its window (h = per hour, "
        "d = per day), e.g. '7/10 h, 97/100 d'; '!' (and colour) marks a bucket under 20 % "
        "of its quota, '-' means nothing is known. A low quota does not change the exit "
        "status. Secrets and tokens are never printed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_selection_arguments(parser)
        parser.add_argument(
            "--use-cache",
            action="store_true",
            help="Accept a cached token instead of fetching a fresh one.",
        )
        parser.add_argument(
            "--probe-api",
            action="store_true",
            help="Also GET the environment's API base URL with the token.",
        )
        parser.add_argument(
            "--workers",
            type=_positive_int,
            default=DEFAULT_WORKERS,
            metavar="N",
            help=f"Check up to N credentials at a time (default {DEFAULT_WORKERS}).",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Write one JSON document to stdout (shape in the command's docstring).",
        )
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="No progress indicator (it is only shown when stderr is a terminal).",
        )

    # --------------------------------------------------------------------- handle

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        workers: int = options.get("workers") or DEFAULT_WORKERS
        verbosity: int = options.get("verbosity", 1)
        if not isinstance(workers, int) or workers < 1:
            raise CommandError("--workers must be at least 1.", returncode=USAGE_ERROR)
        self.require_encryption_key()

        # call_command(...) bypasses argparse choices: select() validates again.
        selected = self.select(options)
        if not selected:
            environment = options.get("environment")
            where = f" for environment {environment}" if environment else ""
            raise CommandError(
                f"No active getpaid credential{where} to check. Add one in the admin "
                "(getpaid client credentials).",
                returncode=USAGE_ERROR,
            )
        keys = {c.pk: refresh.tenant_key(c) for c in selected}

        use_cache = bool(options.get("use_cache"))
        probe_api = bool(options.get("probe_api"))
        fingerprints = verbosity >= 2
        show_progress = not options.get("no_progress") and self.stderr.isatty()

        def check(credential: ClientCredential) -> tuple[CheckResult, str]:
            # Worker thread: no ORM here (credentials and tenants are already loaded).
            return _check_one(credential, use_cache, probe_api, fingerprints)

        results, fingerprint_of = self._run(selected, check, workers, show_progress)
        connectivity.add_usage(results, selected)  # one cache read for every credential
        connectivity.record_results(results)

        results.sort(key=lambda r: (keys[r.credential_id], r.environment, r.credential_id))
        failed = sum(1 for r in results if not r.ok)
        duration = time.monotonic() - started
        if options.get("as_json"):
            self._write_json(results, keys, duration)
        else:
            self._write_table(results, keys, fingerprint_of, verbosity, duration, workers)
        if failed:
            raise CommandError(
                f"{failed} of {len(results)} getpaid check(s) failed.", returncode=CHECK_FAILED
            )

    # --------------------------------------------------------------------- running

    def _run(
        self,
        selected: list[ClientCredential],
        check: Callable[[ClientCredential], tuple[CheckResult, str]],
        workers: int,
        show_progress: bool,
    ) -> tuple[list[CheckResult], dict[int, str]]:
        total = len(selected)
        results: list[CheckResult] = []
        fingerprint_of: dict[int, str] = {}
        executor = ThreadPoolExecutor(max_workers=min(workers, total), thread_name_prefix="gpcheck")
        try:
            futures: dict[Future[tuple[CheckResult, str]], ClientCredential] = {
                executor.submit(check, credential): credential for credential in selected
            }
            if show_progress:
                self._progress(0, total)
            for future in as_completed(futures):
                try:
                    result, fingerprint = future.result()
                except Exception as exc:  # a bug, not a getpaid problem: report, keep going
                    result, fingerprint = _crashed(futures[future], exc), ""
                results.append(result)
                fingerprint_of[result.credential_id] = fingerprint
                if show_progress:
                    self._progress(len(results), total)
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
        if show_progress:
            self.stderr.write("\r" + " " * 40 + "\r", ending="")
            self.stderr.flush()
        return results, fingerprint_of

    def _progress(self, done: int, total: int) -> None:
        self.stderr.write(f"\r checked {done}/{total}", ending="")
        self.stderr.flush()

    # --------------------------------------------------------------------- output

    def _write_json(
        self, results: list[CheckResult], keys: dict[int, str], duration: float
    ) -> None:
        failed = sum(1 for r in results if not r.ok)
        now = time.time()
        document = {
            "ok": failed == 0,
            "checked": len(results),
            "passed": len(results) - failed,
            "failed": failed,
            "duration_ms": round(duration * 1000, 1),
            "results": [{**r.as_dict(now), "tenant_key": keys[r.credential_id]} for r in results],
        }
        self.stdout.write(_escape_json(json.dumps(document, indent=2, ensure_ascii=False)))

    def _write_table(
        self,
        results: list[CheckResult],
        keys: dict[int, str],
        fingerprint_of: dict[int, str],
        verbosity: int,
        duration: float,
        workers: int,
    ) -> None:
        failed = sum(1 for r in results if not r.ok)
        summary = (
            f"{len(results)} checked, {len(results) - failed} ok, {failed} failed "
            f"in {duration:.1f}s"
        )
        if verbosity >= 1:
            now = clock.now()
            epoch_now = time.time()
            header = [
                "STATUS",
                "TENANT",
                "ENV",
                "CLIENT",
                "LATENCY",
                "EXPIRES",
                "SCOPES",
                "QUOTA",
                "ERROR",
            ]
            quota = len(header) - 2  # the QUOTA column's index
            rows = [
                [
                    "OK" if r.ok else "FAIL",
                    printable(keys[r.credential_id]),
                    printable(r.environment),
                    printable(r.client_id),
                    "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms",
                    _expires(r.expires_at, now),
                    printable(_scopes(r)),
                    _quota(r, epoch_now),
                    printable(r.error),
                ]
                for r in results
            ]
            widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
            self.stdout.write(_line(header, widths))
            for r, row in zip(results, rows, strict=True):
                status = row[0].ljust(widths[0])
                styled = self.style.SUCCESS(status) if r.ok else self.style.ERROR(status)
                middle = _line(row[1:quota], widths[1:quota])
                cell = row[quota].ljust(widths[quota])
                if any(b.is_low for b in r.current_buckets(epoch_now)):
                    cell = self.style.WARNING(cell)
                end = _line(row[quota + 1 :], widths[quota + 1 :])
                self.stdout.write(f"{styled}  {middle}  {cell}  {end}".rstrip())
        if verbosity >= 2:
            self.stdout.write("")
            for r in results:
                details = [
                    f"credential_id={r.credential_id}",
                    f"tenant={r.tenant!r}",
                    f"requested={printable(' '.join(r.requested_scopes)) or '-'}",
                    f"granted={printable(' '.join(r.granted_scopes)) or '-'}",
                ]
                if fingerprint_of.get(r.credential_id):
                    details.append(f"token_fingerprint={fingerprint_of[r.credential_id]}")
                if r.api_status is not None:
                    details.append(f"api_status={r.api_status}")
                if r.error_type:
                    details.append(f"error_type={printable(r.error_type)}")
                if r.quota is not None and r.quota.rate_limit is not None:
                    limit = r.quota.rate_limit
                    details.append(f"rate_limit={limit.remaining}/{limit.limit}")
                if r.token_requests_this_hour is not None:
                    details.append(f"token_requests_this_hour={r.token_requests_this_hour}")
                if r.last_used is not None:
                    details.append(f"last_used={clock.iso(r.last_used)}")
                details.append(f"checked_at={clock.iso(r.checked_at.timestamp())}")
                where = printable(f"{keys[r.credential_id]}/{r.environment}")
                self.stdout.write(f"{where}: " + " ".join(details))
        if verbosity >= 3:
            self.stdout.write(
                printable(
                    f"token_url={getpaid_settings.TOKEN_URL} workers={workers} "
                    + " ".join(
                        f"{name}.api_url={env.get('API_URL', '')}"
                        for name, env in sorted(getpaid_settings.environments.items())
                    )
                )
            )
        if verbosity >= 1:
            self.stdout.write("")
        summary_style = self.style.ERROR if failed else self.style.SUCCESS
        self.stdout.write(summary_style(summary))


# ------------------------------------------------------------------------- helpers


def _check_one(
    credential: ClientCredential, use_cache: bool, probe_api: bool, fingerprints: bool
) -> tuple[CheckResult, str]:
    result = connectivity.check_credential(credential, use_cache=use_cache, probe_api=probe_api)
    return result, (result.fingerprint if fingerprints else "")


_BUCKET_ABBREVIATIONS = {"per_hour": "h", "per_day": "d", "per_minute": "min"}


def _quota(result: CheckResult, now: float) -> str:
    """``"7/10 h, 1/100 d!"``: each bucket still in its window, '!' when low; '-' if none."""
    cells = [
        f"{b.remaining}/{b.limit} {_BUCKET_ABBREVIATIONS.get(b.name, b.name)}"
        + ("!" if b.is_low else "")
        for b in result.current_buckets(now)
    ]
    return printable(", ".join(cells)) if cells else "-"


def _crashed(credential: ClientCredential, exc: Exception) -> CheckResult:
    """A failed result for an unexpected exception; its message may hold anything, so omit it."""
    return result_for(
        credential,
        error=f"Unexpected error during the check: {type(exc).__name__}",
        error_type=type(exc).__name__,
    )


# Outside printable ASCII (and the newlines json.dumps puts between lines): checked below.
_NOT_ASCII = re.compile(r"[^\x20-\x7e\n]")
# Control (C0, DEL, C1), format (bidi overrides, zero-width...), surrogate, separator.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _json_escape(match: re.Match[str]) -> str:
    char = match.group()
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code > 0xFFFF:  # UTF-16 surrogate pair, as JSON spells it
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _escape_json(document: str) -> str:
    """Characters that could rewrite a terminal written as JSON escapes.

    Such characters only occur inside JSON strings, where ``\\uXXXX`` means the same: the
    parsed document is unchanged.
    """
    return _NOT_ASCII.sub(_json_escape, document)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _expires(expires_at: datetime | None, now: float) -> str:
    if expires_at is None:
        return "-"
    left = max(0, int(expires_at.timestamp() - now))
    hours, rest = divmod(left, 3600)
    minutes, seconds = divmod(rest, 60)
    remaining = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
    absolute = expires_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{remaining} ({absolute})"


def _scopes(result: CheckResult) -> str:
    """``granted/requested`` then each requested scope; ``!`` marks one not granted."""
    requested = result.requested_scopes
    known = result.expires_at is not None  # a token came back, so granted scopes are known
    if not requested:
        return (" ".join(result.granted_scopes) or "-") if known else "-"
    missing = set(result.missing_scopes)
    count = f"{len(requested) - len(missing)}/{len(requested)}" if known else f"?/{len(requested)}"
    return " ".join([count, *(f"!{s}" if s in missing else s for s in requested)])
