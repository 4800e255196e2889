"""The lease-and-poll rules, step by step, with no I/O: ``_lease_steps`` is driven by hand.

Each test plays the cache, the clock of the poll and the token endpoint: it answers every
step the generator yields and checks what it asks for next. The drivers (``_run``,
``_arun``) are exercised by the service tests with a real cache and a fake getpaid.
"""

from __future__ import annotations

from typing import Any

import pytest

from django_getpaid_auth import cache_backend, clock, credentials, token_store
from django_getpaid_auth.exceptions import InvalidClientError, TokenWaitTimeoutError
from django_getpaid_auth.testing import make_jwt
from django_getpaid_auth.tokens import AccessToken, from_timestamp
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def snapshot():
    tenant = make_tenant()
    make_credential(tenant)
    return credentials.resolve(tenant)


def a_token(name: str) -> AccessToken:
    now = clock.now()
    return AccessToken(
        value=make_jwt({"sub": name, "exp": int(now) + 3600}),
        token_type="Bearer",
        expires_at=from_timestamp(now + 3600),
        scopes=frozenset({"payments:read"}),
        obtained_at=from_timestamp(now),
    )


class Script:
    """Drives the generator: ``answer`` sends the result of the step it yielded last."""

    def __init__(self, steps: Any) -> None:
        self.steps = steps
        self.step = next(steps)
        self.result: Any = None

    def expect_call(self, function: Any, *, shielded: bool = False) -> tuple[Any, ...]:
        step = self.step
        assert isinstance(step, token_store._Call), step
        assert step.function is function, (step.function, function)
        assert step.shielded is shielded
        return step.args

    def answer(self, value: Any = None) -> None:
        try:
            self.step = self.steps.send(value)
        except StopIteration as done:
            self.step, self.result = None, done.value

    def fail(self, error: BaseException) -> None:
        self.step = self.steps.throw(error)


def test_a_remembered_failure_is_raised_before_the_lease(snapshot):
    script = Script(token_store._lease_steps(snapshot, False))
    script.expect_call(token_store.remembered_failure)
    with pytest.raises(InvalidClientError):
        script.answer(InvalidClientError("rejected", status=401))


def test_the_lease_holder_re_reads_fetches_and_releases(snapshot):
    script = Script(token_store._lease_steps(snapshot, False))
    script.expect_call(token_store.remembered_failure)
    script.answer(None)
    assert script.expect_call(cache_backend.get) == (token_store.token_key(snapshot),)
    script.answer(None)  # nothing cached
    key, owner, _timeout = script.expect_call(cache_backend.add)
    assert key == token_store.lease_key(snapshot)
    script.answer(True)  # the lease is ours
    script.expect_call(cache_backend.get)  # re-read: a peer may have just finished
    script.answer(None)
    assert isinstance(script.step, token_store._Request)
    fetched = a_token("fetched")
    script.answer(fetched)
    script.expect_call(token_store._obtained)
    script.answer(fetched)
    assert script.expect_call(token_store._release, shielded=True) == (snapshot, owner)
    script.answer(None)
    assert script.step is None and script.result is fetched


def test_the_lease_is_released_when_the_request_fails(snapshot):
    script = Script(token_store._lease_steps(snapshot, False))
    for answer in (None, None, True, None):  # failure, token, lease, re-read
        script.answer(answer)
    assert isinstance(script.step, token_store._Request)
    error = InvalidClientError("rejected", status=401)
    script.fail(error)
    script.expect_call(token_store._failed)  # counted, remembered, signalled
    script.answer(None)
    script.expect_call(token_store._release, shielded=True)
    with pytest.raises(InvalidClientError) as raised:
        script.answer(None)
    assert raised.value is error


def test_a_peer_token_found_on_the_re_read_is_used_and_the_lease_released(snapshot):
    script = Script(token_store._lease_steps(snapshot, False))
    for answer in (None, None, True):  # failure, token, lease
        script.answer(answer)
    theirs = a_token("peer")
    script.answer(token_store.make_entry(snapshot, theirs))
    script.expect_call(token_store._release, shielded=True)
    script.answer(None)
    assert script.result.value == theirs.value


def test_waiters_poll_with_a_growing_interval_and_check_failures(snapshot):
    script = Script(token_store._lease_steps(snapshot, False))
    script.answer(None)  # no remembered failure
    script.answer(None)  # nothing cached
    intervals = []
    for _ in range(8):
        script.expect_call(cache_backend.add)
        script.answer(False)  # a peer holds the lease
        script.expect_call(token_store.remembered_failure)
        script.answer(None)
        assert isinstance(script.step, token_store._Sleep)
        intervals.append(script.step.seconds)
        script.answer(None)
        script.expect_call(cache_backend.get)
        script.answer(None)  # the peer has not finished yet
    expected = [token_store.POLL_INTERVAL]
    while len(expected) < 8:
        expected.append(min(token_store.POLL_INTERVAL_MAX, expected[-1] * 1.5))
    assert intervals == pytest.approx(expected)
    assert intervals[-1] == token_store.POLL_INTERVAL_MAX
    # The peer's failure, remembered after a lease attempt, is raised.
    script.expect_call(cache_backend.add)
    script.answer(False)
    with pytest.raises(InvalidClientError):
        script.answer(InvalidClientError("rejected", status=401))


def test_a_peer_token_appearing_while_polling_ends_the_wait(snapshot):
    script = Script(token_store._lease_steps(snapshot, False))
    for answer in (None, None, False, None):  # failure, token, lease (taken), failure
        script.answer(answer)
    assert isinstance(script.step, token_store._Sleep)
    script.answer(None)
    theirs = a_token("peer")
    script.answer(token_store.make_entry(snapshot, theirs))
    assert script.result.value == theirs.value


def test_waiting_longer_than_wait_timeout_fails(snapshot, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "WAIT_TIMEOUT": 0}
    script = Script(token_store._lease_steps(snapshot, False))
    for answer in (None, None, False):  # failure, token, lease (taken)
        script.answer(answer)
    with pytest.raises(TokenWaitTimeoutError) as raised:
        script.answer(None)  # no remembered failure: the deadline has passed
    assert str(raised.value).startswith(
        "Timed out waiting for another process's token request "
        "(lease held longer than WAIT_TIMEOUT=0s)."
    )


def test_a_forced_refresh_never_settles_for_the_token_it_replaces(snapshot):
    old, new = a_token("old"), a_token("new")
    script = Script(token_store._lease_steps(snapshot, True))
    script.answer(None)  # no remembered failure
    script.answer(token_store.make_entry(snapshot, old))  # the token to replace
    script.expect_call(cache_backend.add)  # not served: a lease attempt
    script.answer(False)
    script.answer(None)  # no remembered failure
    script.answer(None)  # slept
    script.answer(token_store.make_entry(snapshot, old))  # still the old one: wait on
    script.expect_call(cache_backend.add)
    script.answer(False)
    script.answer(None)
    script.answer(None)
    script.answer(token_store.make_entry(snapshot, new))  # a peer's new token
    assert script.result.value == new.value
