"""A worker process for the multi-process tests: T threads, each calling get_token at once.

Protocol (stdin/stdout, one line each): the worker warms its credential snapshot, prints
READY, waits for a line "GO <epoch>" on stdin, then at that moment every thread calls
get_token(tenant) once; it prints one JSON line with each call's latency and token
fingerprint, and exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def main() -> None:
    import django

    django.setup()
    from django_getpaid_auth import credentials, get_token

    tenant, threads = sys.argv[1], int(sys.argv[2])
    credentials.resolve(tenant)  # SQL once, before the race
    print("READY", flush=True)
    line = sys.stdin.readline().split()
    go_at = float(line[1])
    results: list[dict] = []
    lock = threading.Lock()

    def call() -> None:
        while time.time() < go_at:
            time.sleep(0.001)
        started = time.monotonic()
        try:
            token = get_token(tenant)
            outcome = {"fingerprint": token.fingerprint}
        except Exception as exc:  # reported to the parent, which asserts on it
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
        outcome["latency"] = time.monotonic() - started
        with lock:
            results.append(outcome)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    from django_getpaid_auth import token_store

    token_store.wait_for_background_refreshes()  # a refresh started here must land
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
