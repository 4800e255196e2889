"""Benchmark 6: the async API, ours vs a floor and the async peers.

Part "warm" (one process, one event loop): median time per authenticated GET with
``await aget_session(tenant)`` anew for every request, against a floor (one long-lived
``httpx.AsyncClient`` with a fixed Authorization header), Authlib ``AsyncOAuth2Client``
(client_credentials grant) and httpx-auth ``OAuth2ClientCredentials`` on one long-lived
``httpx.AsyncClient``. Requests are interleaved one by one, in a shuffled order each time,
against the same fake getpaid in its own process. Then the SQL queries (any thread) and
cache round trips of 100 warm ``aget_session`` calls, and of 100 warm ``aget_session`` +
GET.

Part "client" (one process, no network): the client-side CPU per request, with every
library's transport answering a canned 200 in memory: the floor vs ``aget_session`` + GET,
a reused ``GetpaidAsyncClient`` and ``aget_session`` alone (best of 7 x 3,000). What is
left of the warm-path gap is client CPU; this part shows how much.

Part "expiry": P processes x C coroutines call the API continuously for DURATION seconds
across several token expiries (lifetime L), token endpoint 300 ms, one fresh fake per
library. Ours: ``aget_session`` per request, Redis shared by the processes. Authlib and
httpx-auth: one client per process shared by its coroutines (what their docs show for a
client_credentials client; one per request would fetch a token per request). Figures:
token requests counted at the fake, latency, and the worst lateness of a 5 ms heartbeat
coroutine in each process (how long the event loop was blocked).

    python benchmarks/bench_async.py [--part warm|client|expiry|all] [--cache locmem|redis]
        [--requests 400] [--rounds 10] [--processes 4] [--coroutines 100]
        [--lifetime 10] [--duration 25] [--think 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    FakeServer,
    configure_django,
    create_tenants,
    machine,
    median,
    percentile,
)

HERE = Path(__file__).resolve().parent
LEEWAY = 1.0  # every library refreshes about 1 s before expiry (ours: REFRESH_MARGIN)
WARM_LIBRARIES = ("floor", "ours", "authlib", "httpx-auth")
EXPIRY_LIBRARIES = "ours,authlib,httpx-auth"


async def make_async_getter(
    library: str, info: dict[str, str], leeway: float = LEEWAY
) -> Callable[[], Awaitable[int]]:
    """A zero-argument coroutine function doing one authenticated GET as `library` would.

    Must be called inside the event loop that will use it (httpx pools belong to a loop).
    """
    import httpx

    client_id, secret = "bench-0", "secret-0"
    url = info["api_url"] + "/v2/ping"
    if library == "floor":  # hand-written: one token, one long-lived AsyncClient
        async with httpx.AsyncClient() as once:
            response = await once.post(
                info["token_url"],
                json={
                    "client_id": client_id,
                    "client_secret": secret,
                    "grant_type": "client_credentials",
                    "audience": "https://api.sandbox.getpaid.io",
                },
            )
        client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {response.json()['access_token']}"}
        )

        async def floor() -> int:
            return (await client.get(url)).status_code

        return floor
    if library == "ours":
        from django_getpaid_auth import aget_session

        async def ours() -> int:
            session = await aget_session("bench-0")
            return (await session.get("/v2/ping")).status_code

        return ours
    if library == "authlib":
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        client = AsyncOAuth2Client(
            client_id,
            secret,
            token_endpoint=info["token_url"],
            grant_type="client_credentials",
            leeway=int(leeway),
        )
        await client.fetch_token()

        async def authlib() -> int:
            return (await client.get(url)).status_code

        return authlib
    if library == "httpx-auth":
        from httpx_auth import OAuth2ClientCredentials

        auth = OAuth2ClientCredentials(info["token_url"], client_id, secret, early_expiry=leeway)
        client = httpx.AsyncClient(auth=auth)

        async def httpx_auth() -> int:
            return (await client.get(url)).status_code

        return httpx_auth
    raise ValueError(library)


@contextlib.contextmanager
def count_io() -> Iterator[dict[str, int]]:
    """Count SQL statements on every connection of every thread, and Redis commands."""
    from django.db.backends.utils import CursorWrapper

    counts = {"sql": 0, "redis": 0}
    patched: list[tuple[Any, str, Any]] = []

    def wrap(cls: Any, name: str, kind: str) -> None:
        original = getattr(cls, name)

        def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts[kind] += 1
            return original(self, *args, **kwargs)

        patched.append((cls, name, original))
        setattr(cls, name, counting)

    wrap(CursorWrapper, "execute", "sql")
    wrap(CursorWrapper, "executemany", "sql")
    try:
        import redis

        wrap(redis.Redis, "execute_command", "redis")
        wrap(redis.client.Pipeline, "execute", "redis")
    except ImportError:
        pass
    try:
        yield counts
    finally:
        for cls, name, original in reversed(patched):
            setattr(cls, name, original)


async def warm(args: argparse.Namespace, server: FakeServer) -> None:
    from asgiref.sync import sync_to_async

    from django_getpaid_auth import aget_session
    from django_getpaid_auth.models import Tenant

    getters = {lib: await make_async_getter(lib, server.info) for lib in WARM_LIBRARIES}
    for get in getters.values():  # warm connections, the memo and caches
        for _ in range(50):
            assert await get() == 200
    per_request: dict[str, list[float]] = {lib: [] for lib in WARM_LIBRARIES}
    order = list(getters)
    clock = time.perf_counter
    for _ in range(args.rounds * args.requests):
        random.shuffle(order)
        for lib in order:
            get = getters[lib]
            started = clock()
            await get()
            per_request[lib].append(clock() - started)
    with count_io() as check:  # the counter sees an ORM query made from the loop
        await sync_to_async(Tenant.objects.count)()
    await getters["ours"]()  # re-read the memo so the counts below start warm
    with count_io() as bare:
        for _ in range(100):
            await aget_session("bench-0")
    with count_io() as with_get:
        for _ in range(100):
            await getters["ours"]()
    floor = median(per_request["floor"])
    total = args.rounds * args.requests
    print(f"# async warm path, cache={args.cache}, {total} GETs per library, interleaved")
    print(f"# {machine()}")
    print(f"{'library':<20}{'median us/request':>20}{'vs floor':>10}")
    for lib in WARM_LIBRARIES:
        value = median(per_request[lib])
        print(f"{lib:<20}{value * 1e6:>20.1f}{value / floor:>10.3f}")
    print(f"counter check (one ORM count via sync_to_async): {check['sql']} SQL")
    print(f"100 warm aget_session(): {bare['sql']} SQL, {bare['redis']} Redis commands")
    print(
        f"100 warm aget_session() + GET: {with_get['sql']} SQL, {with_get['redis']} Redis commands"
    )


def run_warm(args: argparse.Namespace) -> None:
    server = FakeServer()
    try:
        configure_django(cache=args.cache, server=server)
        create_tenants(1)
        asyncio.run(warm(args, server))
    finally:
        server.close()


async def client_side() -> None:
    import httpx

    from django_getpaid_auth import aget_session, asession

    class Canned(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"Content-Type": "application/json"}, content=b"{}")

    first = await aget_session("bench-0")
    assert (await first.get("/v2/ping")).status_code == 200  # the token, over the network
    asession._pools[asyncio.get_running_loop()]._shared = Canned()  # this loop's pool
    floor = httpx.AsyncClient(headers={"Authorization": "Bearer x"}, transport=Canned())
    url = first.api_url.rstrip("/") + "/v2/ping"

    async def floor_get() -> Any:
        return await floor.get(url)

    async def ours_get() -> Any:
        return await (await aget_session("bench-0")).get("/v2/ping")

    async def reused_get() -> Any:
        return await first.get("/v2/ping")

    async def session_only() -> Any:
        return await aget_session("bench-0")

    cases = {
        "floor": floor_get,
        "ours (aget_session + GET)": ours_get,
        "ours, one client reused": reused_get,
        "aget_session alone": session_only,
    }
    best: dict[str, float] = {}
    for name, call in cases.items():
        best[name] = float("inf")
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(3000):
                await call()
            best[name] = min(best[name], (time.perf_counter() - started) / 3000)
    print("# async client side: canned in-memory answers, best of 7 x 3,000")
    print(f"# {machine()}")
    for name, value in best.items():
        print(f"{name:<28}{value * 1e6:>8.1f} us{value / best['floor']:>8.3f}")


def run_client(args: argparse.Namespace) -> None:
    server = FakeServer()
    try:
        configure_django(cache=args.cache, server=server)
        create_tenants(1)
        asyncio.run(client_side())
    finally:
        server.close()


def run_expiry_library(library: str, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bench_expiry import prepare_database

    server = FakeServer(latency=0.3, lifetime=args.lifetime)
    try:
        db = prepare_database(server) if library == "ours" else ""
        go_at = time.time() + 4.0  # time for every process to start and warm up
        config = {
            "library": library,
            "info": server.info,
            "db": db,
            "coroutines": args.coroutines,
            "think": args.think,
            "duration": args.duration,
            "go_at": go_at,
            "leeway": LEEWAY,
            "prefix": f"async-{library}-{go_at:.0f}",
            "ours_settings": {
                "REFRESH_MARGIN": LEEWAY,
                "REFRESH_MARGIN_RATIO": 0.0,
                "CLOCK_SKEW": 0.5,
                "LEASE_TIMEOUT": 5.0,
            },
        }
        workers = [
            subprocess.Popen(
                [sys.executable, str(HERE / "_async_worker.py"), json.dumps(config)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.processes)
        ]
        latencies: list[float] = []
        errors: list[str] = []
        stalls: list[float] = []
        for w in workers:
            out, _ = w.communicate(timeout=args.duration + 120)
            result = json.loads(out.strip().splitlines()[-1])
            latencies += result["latencies"]
            errors += result["errors"]
            stalls.append(result["stall_max"])
        tokens = server.token_requests()
    finally:
        server.close()
    return {
        "library": library,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "tokens": tokens,
        "per_lifetime": tokens / (args.duration / args.lifetime),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "p999": percentile(latencies, 99.9),
        "max": max(latencies),
        "stall": max(stalls),
    }


def run_expiry(args: argparse.Namespace) -> None:
    print(
        f"# async expiry: {args.processes} processes x {args.coroutines} coroutines, token "
        f"lifetime {args.lifetime}s, {args.duration:g}s run "
        f"({args.duration / args.lifetime:.1f} lifetimes), token endpoint 300 ms, every "
        f"library refreshes {LEEWAY:g}s before expiry, think time {args.think:g}s"
    )
    print(f"# {machine()}")
    print(
        f"{'library':<12}{'requests':>9}{'errors':>7}{'tokens':>7}{'tok/life':>9}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'p99.9 ms':>9}{'max ms':>8}{'loop stall ms':>14}"
    )
    for library in args.libraries.split(","):
        r = run_expiry_library(library, args)
        print(
            f"{r['library']:<12}{r['requests']:>9}{r['errors']:>7}{r['tokens']:>7}"
            f"{r['per_lifetime']:>9.2f}{r['p50'] * 1e3:>8.1f}{r['p99'] * 1e3:>8.1f}"
            f"{r['p999'] * 1e3:>9.1f}{r['max'] * 1e3:>8.1f}{r['stall'] * 1e3:>14.1f}",
            flush=True,
        )
        if r["error_kinds"]:
            print(f"  errors: {r['error_kinds']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["warm", "client", "expiry", "all"], default="all")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cache", choices=["locmem", "redis"], default="locmem")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--coroutines", type=int, default=100)
    parser.add_argument("--lifetime", type=int, default=10)
    parser.add_argument("--duration", type=float, default=25.0)
    parser.add_argument(
        "--think", type=float, default=0.0, help="expiry: mean pause between a coroutine's calls"
    )
    parser.add_argument("--libraries", default=EXPIRY_LIBRARIES, help="expiry part")
    args = parser.parse_args()
    if args.part in ("warm", "all"):
        run_warm(args)
    if args.part == "client":
        run_client(args)
    if args.part in ("expiry", "all"):
        run_expiry(args)


if __name__ == "__main__":
    main()
