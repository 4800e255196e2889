"""Benchmark 4: scale to many tenants.

* getpaid_check over N tenants against the fake server (its own process): wall time with
  --workers 32, against --workers 1 on a subset measured in the same run.
* Memory of the process-local state (credential snapshots, token copies, decrypted-token
  memo) after every tenant has been used once, measured with tracemalloc.
* The admin credentials list page: SQL queries and time with N rows vs with 1 row.

    python benchmarks/bench_scale.py [--tenants 10000] [--subset 500] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from io import StringIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import FakeServer, configure_django, create_tenants, machine


def run_check(*options: str) -> tuple[float, dict]:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    out = StringIO()
    started = time.perf_counter()
    try:
        call_command(
            "getpaid_check", "--json", "--no-progress", *options, stdout=out, stderr=StringIO()
        )
    except CommandError as exc:
        print(f"getpaid_check exited {exc.returncode}", file=sys.stderr)
    return time.perf_counter() - started, json.loads(out.getvalue())


def admin_list(client) -> tuple[int, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/django_getpaid_auth/clientcredential/")
    assert response.status_code == 200
    return len(queries), time.perf_counter() - started, len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.05, help="token endpoint seconds")
    args = parser.parse_args()

    server = FakeServer(clients=args.tenants, latency=args.latency)
    try:
        configure_django(cache="locmem", server=server)
        started = time.perf_counter()
        create_tenants(args.tenants)
        print(f"# {args.tenants} tenants created in {time.perf_counter() - started:.1f}s")
        print(f"# token endpoint latency {args.latency * 1000:.0f} ms; {machine()}")
        from django.contrib.auth.models import User
        from django.test import Client

        from django_getpaid_auth import credentials, get_token, service, token_store

        subset = [f"--tenant=bench-{i}" for i in range(args.subset)]
        one, _ = run_check("--workers=1", *subset)
        many, _ = run_check("--workers=32", *subset)
        print(
            f"getpaid_check {args.subset} tenants: --workers 1 {one:.2f}s, --workers 32 "
            f"{many:.2f}s, speed-up x{one / many:.1f}"
        )
        total, report = run_check("--workers=32")
        print(
            f"getpaid_check {args.tenants} tenants --workers 32: {total:.1f}s "
            f"({report['passed']} ok, {report['failed']} failed), "
            f"{total / args.tenants * 1000:.2f} ms per tenant"
        )

        credentials.clear_local_snapshots()
        service.clear_memo()
        token_store.clear_decrypted()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(args.tenants):
            get_token(f"bench-{i}")
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        print(
            f"process-local state for {args.tenants} tenants: {used / 2**20:.1f} MiB "
            f"({used / args.tenants / 1024:.2f} KiB per tenant)"
        )

        User.objects.create_superuser("bench", "bench@example.com", "bench")
        client = Client()
        client.force_login(User.objects.get(username="bench"))
        admin_list(client)  # warm templates
        q_many, t_many, size = admin_list(client)
        from django_getpaid_auth.models import ClientCredential

        keep = ClientCredential.objects.order_by("pk").values_list("pk", flat=True)[:1]
        ClientCredential.objects.exclude(pk__in=list(keep)).delete()
        q_one, t_one, _ = admin_list(client)
        print(
            f"admin list: {q_many} queries / {t_many * 1000:.0f} ms with {args.tenants} rows "
            f"(page of 100, {size // 1024} KiB); {q_one} queries / {t_one * 1000:.0f} ms with 1 row"
        )
    finally:
        server.close()


if __name__ == "__main__":
    main()
