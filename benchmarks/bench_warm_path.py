"""Benchmark 1: warm-path overhead per authenticated GET, ours vs the floor and the peers.

The floor is a hand-written integration: one requests.Session, kept alive, with a fixed
Authorization header. Ours calls get_session(tenant) anew for every request, as a view
would. Requests of all libraries are interleaved one by one (shuffled each time) against
the same local server in its own process; the figure is the median time per request over
ROUNDS x N requests each.

    python benchmarks/bench_warm_path.py [--requests 500] [--rounds 7] [--cache locmem|redis]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    LIBRARIES,
    FakeServer,
    configure_django,
    create_tenants,
    machine,
    make_getter,
    median,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cache", choices=["locmem", "redis"], default="locmem")
    args = parser.parse_args()

    server = FakeServer()
    try:
        configure_django(cache=args.cache, server=server)
        create_tenants(1)
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from django_getpaid_auth import get_session

        getters = {lib: make_getter(lib, server) for lib in LIBRARIES}
        for get in getters.values():  # warm connections and caches
            for _ in range(50):
                assert get() == 200
        # Interleave request by request, in a shuffled order each time, so drift in the
        # server or the machine hits every library alike; the figure is the median.
        per_request: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
        order = list(getters)
        clock = time.perf_counter
        for _ in range(args.rounds * args.requests):
            random.shuffle(order)
            for lib in order:
                get = getters[lib]
                started = clock()
                get()
                per_request[lib].append(clock() - started)
        with CaptureQueriesContext(connection) as queries:
            for _ in range(100):
                get_session("bench-0")
        floor = median(per_request["floor"])
        print(f"# warm path, cache={args.cache}, {args.rounds * args.requests} GETs per library")
        print(f"# {machine()}")
        print(f"{'library':<20}{'median us/request':>20}{'vs floor':>10}")
        for lib in LIBRARIES:
            value = median(per_request[lib])
            print(f"{lib:<20}{value * 1e6:>20.1f}{value / floor:>10.3f}")
        print(f"SQL queries in 100 warm get_session() calls: {len(queries)}")
    finally:
        server.close()


if __name__ == "__main__":
    main()
