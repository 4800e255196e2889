"""A process that finds another process's token request in flight (the shared lease held).

The other process is played by the test: it takes the lease in the shared cache, then
(from a timer thread, as its request completes) stores its token or its failure the way
the token store does. This process must wait for it instead of asking getpaid too.
"""

from __future__ import annotations

import threading

import pytest

from django_getpaid_auth import cache_backend, clock, credentials, get_token, token_store
from django_getpaid_auth.exceptions import InvalidClientError, TokenWaitTimeoutError
from django_getpaid_auth.testing import make_jwt
from django_getpaid_auth.tokens import AccessToken, from_timestamp
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def peer_holds_lease():
    """A tenant whose token request another process is making right now."""
    tenant = make_tenant()
    make_credential(tenant)
    snapshot = credentials.resolve(tenant)
    assert cache_backend.add(token_store.lease_key(snapshot), "peer-process", timeout=60)
    timers: list[threading.Timer] = []

    def later(seconds: float, action) -> None:
        timer = threading.Timer(seconds, action)
        timers.append(timer)
        timer.start()

    yield tenant, snapshot, later
    for timer in timers:
        timer.cancel()
        timer.join()


def peer_token() -> AccessToken:
    now = clock.now()
    return AccessToken(
        value=make_jwt({"sub": "peer", "exp": int(now) + 3600}),
        token_type="Bearer",
        expires_at=from_timestamp(now + 3600),
        scopes=frozenset({"payments:read"}),
        obtained_at=from_timestamp(now),
    )


def test_waits_for_the_peer_and_uses_its_token(endpoint, peer_holds_lease):
    tenant, snapshot, later = peer_holds_lease
    theirs = peer_token()
    later(0.3, lambda: token_store.store(snapshot, theirs))
    assert get_token(tenant).value == theirs.value
    assert endpoint.count == 0  # getpaid was asked once in all, by the peer


def test_a_failure_the_peer_remembers_is_raised_without_asking_again(endpoint, peer_holds_lease):
    tenant, snapshot, later = peer_holds_lease
    rejected = InvalidClientError("getpaid rejected the client credentials.", status=401)
    later(0.3, lambda: token_store._remember(snapshot, rejected))
    with pytest.raises(InvalidClientError, match="rejected the client credentials"):
        get_token(tenant)
    assert endpoint.count == 0


def test_a_peer_that_never_finishes_times_out(endpoint, peer_holds_lease, settings):
    tenant, _snapshot, _later = peer_holds_lease
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "WAIT_TIMEOUT": 0.3}
    with pytest.raises(TokenWaitTimeoutError, match=r"WAIT_TIMEOUT=0\.3s"):
        get_token(tenant)
    assert endpoint.count == 0
