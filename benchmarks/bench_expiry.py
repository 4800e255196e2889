"""Benchmarks 2 and 3: token requests per token lifetime, and tail latency across expiry.

P processes x T threads call the API continuously for DURATION seconds, across several
token expiries (lifetime L), against a fake getpaid whose token endpoint takes 300 ms.
Ours shares Redis between the processes; each peer keeps one client per process (shared
by its threads), as a careful integration would. Every library gets a fresh server.

Figures per library: token requests, token requests per lifetime (requests / (D / L)),
and latency p50 / p99 / p99.9 / max with the p99/p50 ratio.

    python benchmarks/bench_expiry.py [--processes 4] [--threads 4] [--lifetime 10] [--duration 25]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import FakeServer, machine, percentile

HERE = Path(__file__).resolve().parent
LEEWAY = 1.0  # every library refreshes about 1 s before expiry (ours: --margin)


def prepare_database(server: FakeServer) -> str:
    """A SQLite file with tenant bench-0, made in a child process (settings are global)."""
    db = os.path.join(tempfile.mkdtemp(), "expiry.sqlite3")
    code = (
        f"import sys; sys.path.insert(0, {str(HERE.parent)!r})\n"
        "from types import SimpleNamespace\n"
        "from benchmarks._common import configure_django, create_tenants\n"
        f"server = SimpleNamespace(info={server.info!r})\n"
        f"configure_django(cache='locmem', server=server, db_path={db!r})\n"
        "create_tenants(1)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    return db


def run(library: str, args: argparse.Namespace) -> dict:
    server = FakeServer(latency=0.3, lifetime=args.lifetime)
    try:
        db = prepare_database(server) if library == "ours" else ""
        go_at = time.time() + 3.0  # time for every process to start and warm up
        config = {
            "library": library,
            "info": server.info,
            "db": db,
            "threads": args.threads,
            "duration": args.duration,
            "go_at": go_at,
            "leeway": LEEWAY,
            "prefix": f"expiry-{library}-{go_at:.0f}",
            "ours_settings": {
                "REFRESH_MARGIN": args.margin,
                "REFRESH_MARGIN_RATIO": 0.0,
                "CLOCK_SKEW": 0.5,
                "LEASE_TIMEOUT": 5.0,
            },
        }
        workers = [
            subprocess.Popen(
                [sys.executable, str(HERE / "_expiry_worker.py"), json.dumps(config)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.processes)
        ]
        latencies: list[float] = []
        errors: list[str] = []
        slow: list[float] = []
        for w in workers:
            out, _ = w.communicate(timeout=args.duration + 120)
            result = json.loads(out.strip().splitlines()[-1])
            latencies += result["latencies"]
            errors += result["errors"]
            slow += result["slow"]
        tokens = server.token_requests()
    finally:
        server.close()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return {
        "library": library,
        "requests": len(latencies),
        "errors": len(errors),
        "tokens": tokens,
        "per_lifetime": tokens / (args.duration / args.lifetime),
        "p50": p50,
        "p99": p99,
        "p999": percentile(latencies, 99.9),
        "max": max(latencies),
        "slow": sum(1 for v in latencies if v >= 0.25),
        "slow_at": sorted(slow),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--lifetime", type=int, default=10)
    parser.add_argument("--duration", type=float, default=25.0)
    parser.add_argument("--libraries", default="ours,authlib,requests-oauthlib,requests-auth")
    parser.add_argument("--margin", type=float, default=LEEWAY, help="ours: REFRESH_MARGIN")
    parser.add_argument("--verbose", action="store_true", help="list when slow calls happened")
    args = parser.parse_args()
    print(
        f"# {args.processes} processes x {args.threads} threads, token lifetime "
        f"{args.lifetime}s, {args.duration:g}s run ({args.duration / args.lifetime:.1f} "
        f"lifetimes), token endpoint 300 ms, our refresh margin {args.margin:g}s"
    )
    print(f"# {machine()}")
    header = (
        f"{'library':<19}{'requests':>9}{'errors':>7}{'tokens':>7}{'tok/life':>9}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'p99/p50':>8}{'p99.9 ms':>9}{'max ms':>8}{'>=250ms':>8}"
    )
    print(header)
    for library in args.libraries.split(","):
        r = run(library, args)
        print(
            f"{r['library']:<19}{r['requests']:>9}{r['errors']:>7}{r['tokens']:>7}"
            f"{r['per_lifetime']:>9.2f}{r['p50'] * 1e3:>8.1f}{r['p99'] * 1e3:>8.1f}"
            f"{r['p99'] / r['p50']:>8.2f}{r['p999'] * 1e3:>9.1f}{r['max'] * 1e3:>8.1f}"
            f"{r['slow']:>8}",
            flush=True,
        )
        if args.verbose:
            print(f"  calls >= 250 ms at (s after start): {r['slow_at']}", flush=True)


if __name__ == "__main__":
    main()
