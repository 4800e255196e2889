"""One worker process of bench_expiry.py: T threads calling the API until a deadline."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import configure_django, make_getter


def main() -> None:
    config = json.loads(sys.argv[1])
    server = SimpleNamespace(info=config["info"])
    if config["library"] == "ours":
        configure_django(
            cache="redis",
            server=server,
            db_path=config["db"],
            extra=config["ours_settings"],
            prefix=config["prefix"],
        )
        from django_getpaid_auth import credentials

        credentials.resolve("bench-0")  # the credential is loaded before the race
    get = make_getter(config["library"], server, leeway=config["leeway"])
    latencies: list[float] = []
    errors: list[str] = []
    slow: list[float] = []  # seconds after the start at which a call took >= 250 ms
    lock = threading.Lock()
    go_at, stop_at = config["go_at"], config["go_at"] + config["duration"]

    def loop() -> None:
        while time.time() < go_at:
            time.sleep(0.001)
        mine, my_errors, my_slow = [], [], []
        while time.time() < stop_at:
            started = time.perf_counter()
            try:
                status = get()
                if status != 200:
                    my_errors.append(f"HTTP {status}")
            except Exception as exc:  # counted and reported, never hidden
                my_errors.append(type(exc).__name__)
            took = time.perf_counter() - started
            mine.append(took)
            if took >= 0.25:
                my_slow.append(round(time.time() - go_at, 2))
        with lock:
            latencies.extend(mine)
            errors.extend(my_errors)
            slow.extend(my_slow)

    threads = [threading.Thread(target=loop) for _ in range(config["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"latencies": latencies, "errors": errors, "slow": sorted(slow)}), flush=True)


if __name__ == "__main__":
    main()
