"""A long-lived worker process for tests/test_cross_process.py.

Reads commands on stdin, one per line, and answers each with one JSON line:
``GET <tenant key>`` -> the client id get_token used (or the error class);
``POLL <tenant key> <seconds>`` -> every distinct answer seen while calling in a loop.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import django

    django.setup()
    from django_getpaid_auth import service

    def outcome(key: str) -> dict[str, str]:
        try:
            snapshot, _token = service.current_token(key, None)
            return {"client_id": snapshot.client_id}
        except Exception as exc:  # reported to the parent, which asserts on it
            return {"error": type(exc).__name__}

    print("READY", flush=True)
    for line in sys.stdin:
        command, key, *rest = line.split()
        if command == "GET":
            print(json.dumps(outcome(key)), flush=True)
        elif command == "POLL":
            end = time.monotonic() + float(rest[0])
            seen: set[str] = set()
            while time.monotonic() < end:
                seen.add(json.dumps(outcome(key), sort_keys=True))
                time.sleep(0.01)
            print(json.dumps(sorted(seen)), flush=True)


if __name__ == "__main__":
    main()
