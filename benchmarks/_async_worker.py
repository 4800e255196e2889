"""One worker process of bench_async.py's expiry part: C coroutines calling the API.

Also runs a heartbeat coroutine that sleeps 5 ms at a time and records how late it woke:
its worst lateness is the longest the event loop was blocked.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import configure_django
from benchmarks.bench_async import make_async_getter

TICK = 0.005


async def run(config: dict) -> dict:
    get = await make_async_getter(config["library"], config["info"], leeway=config["leeway"])
    go_at, stop_at = config["go_at"], config["go_at"] + config["duration"]
    latencies: list[float] = []
    errors: list[str] = []
    stall = [0.0]
    think = config["think"]

    async def heartbeat() -> None:
        while time.time() < stop_at:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            late = time.perf_counter() - before - TICK
            if time.time() >= go_at:
                stall[0] = max(stall[0], late)

    async def loop() -> None:
        await asyncio.sleep(max(0.0, go_at - time.time()))
        while time.time() < stop_at:
            started = time.perf_counter()
            try:
                status = await get()
                if status != 200:
                    errors.append(f"HTTP {status}")
            except Exception as exc:  # counted and reported, never hidden
                errors.append(type(exc).__name__)
            latencies.append(time.perf_counter() - started)
            if think:  # a pause between requests, jittered so the coroutines drift apart
                await asyncio.sleep(think * random.uniform(0.5, 1.5))

    await asyncio.gather(heartbeat(), *(loop() for _ in range(config["coroutines"])))
    return {"latencies": latencies, "errors": errors, "stall_max": stall[0]}


def main() -> None:
    config = json.loads(sys.argv[1])
    if config["library"] == "ours":
        configure_django(
            cache="redis",
            server=SimpleNamespace(info=config["info"]),
            db_path=config["db"],
            extra=config["ours_settings"],
            prefix=config["prefix"],
        )
        from django_getpaid_auth import credentials

        credentials.resolve("bench-0")  # the credential is loaded before the race
    print(json.dumps(asyncio.run(run(config))), flush=True)


if __name__ == "__main__":
    main()
