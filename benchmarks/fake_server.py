"""The fake getpaid in its own process, driven over stdin (so benchmarks measure clients only).

Prints one JSON line {"url", "token_url", "api_url"} when ready, then answers commands,
one per line: "count" (token requests answered), "latency <s>", "quit".
"""

from __future__ import annotations

import json
import sys

from django_getpaid_auth.testing import SANDBOX_AUDIENCE, FakeGetpaid


def main() -> None:
    latency, lifetime, clients = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    fake = FakeGetpaid(token_latency=latency, token_lifetime=lifetime).start()
    fake.default_audience = SANDBOX_AUDIENCE  # like Auth0's tenant default audience
    for i in range(clients):
        fake.register_client(f"bench-{i}", f"secret-{i}")
    print(
        json.dumps(
            {"url": fake.url, "token_url": fake.token_url, "api_url": fake.api_url("sandbox")}
        ),
        flush=True,
    )
    for line in sys.stdin:
        command, *args = line.split()
        if command == "count":
            print(fake.token_request_count(), flush=True)
        elif command == "latency":
            fake.token_latency = float(args[0])
            print("ok", flush=True)
        elif command == "quit":
            break
    fake.stop()


if __name__ == "__main__":
    main()
