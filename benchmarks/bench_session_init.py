"""Benchmark 4: is a hand-made ``GetpaidSession.__init__`` worth keeping?

``requests.Session.__init__`` builds two ``HTTPAdapter``s that ``GetpaidSession`` throws
away for the process-wide one. Version 0.1 skipped them with a hand-made ``__init__``
that copied requests' attribute list. This measures, in one run, what building a session
costs each way (``get_session(tenant)``, warm) and compares the difference with one warm
authenticated GET against the local fake getpaid (the floor of benchmark 1).

    python benchmarks/bench_session_init.py [--calls 20000] [--rounds 7] [--requests 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import FakeServer, configure_django, create_tenants, machine, make_getter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    server = FakeServer()
    try:
        configure_django(cache="locmem", server=server)
        create_tenants(1)
        from requests.cookies import cookiejar_from_dict
        from requests.hooks import default_hooks
        from requests.models import DEFAULT_REDIRECT_LIMIT
        from requests.utils import default_headers

        from django_getpaid_auth import session as session_module
        from django_getpaid_auth.session import GetpaidBearerAuth, GetpaidSession, get_session
        from django_getpaid_auth.user_agent import USER_AGENT

        shared = session_module._shared_adapter

        class HandMadeInit(GetpaidSession):
            """Version 0.1's __init__: requests' attributes set by hand, no throwaway pools."""

            def __init__(self, snapshot, tenant, environment):  # type: ignore[no-untyped-def]
                self.headers = default_headers()
                self.proxies, self.params, self.hooks = {}, {}, default_hooks()
                self.stream, self.verify, self.cert = False, True, None
                self.max_redirects, self.trust_env = DEFAULT_REDIRECT_LIMIT, True
                self.cookies = cookiejar_from_dict({})
                self.adapters = OrderedDict((("https://", shared), ("http://", shared)))
                self.tenant, self.environment = tenant, snapshot.environment
                self.api_url = snapshot.api_url
                self.headers["User-Agent"] = USER_AGENT
                self.auth = GetpaidBearerAuth(tenant, environment)

        from django_getpaid_auth import service

        snapshot = service.credential_for("bench-0", None)
        builders = {
            "ordinary (super().__init__)": lambda: get_session("bench-0"),
            "hand-made (0.1)": lambda: HandMadeInit(snapshot, "bench-0", None),
        }
        timings: dict[str, list[float]] = {name: [] for name in builders}
        for _ in range(args.rounds):
            for name, build in builders.items():
                started = time.perf_counter()
                for _ in range(args.calls):
                    build()
                timings[name].append((time.perf_counter() - started) / args.calls * 1e6)
        floor = make_getter("floor", server)
        for _ in range(50):
            floor()
        per_request = []
        for _ in range(args.requests):
            started = time.perf_counter()
            floor()
            per_request.append((time.perf_counter() - started) * 1e6)
        per_request.sort()
        request_us = per_request[len(per_request) // 2]
        print(machine())
        best = {name: min(values) for name, values in timings.items()}
        for name, value in best.items():
            print(f"{name:30s} {value:8.2f} µs per get_session (best of {args.rounds})")
        extra = best["ordinary (super().__init__)"] - best["hand-made (0.1)"]
        print(f"one warm GET (floor, median)   {request_us:8.1f} µs")
        print(
            f"ordinary costs {extra:+.2f} µs per get_session = {extra / request_us:+.2%} "
            "of a warm request"
        )
    finally:
        server.close()


if __name__ == "__main__":
    main()
