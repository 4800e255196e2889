"""Symmetric encryption with Fernet keys from ``GETPAID_AUTH["ENCRYPTION_KEYS"]``.

The first key encrypts; every key decrypts (``MultiFernet``), so keys can be rotated
without downtime. Keys are deliberately not derived from ``SECRET_KEY``: rotating
``SECRET_KEY`` must never make stored credentials unreadable.

Keys, secrets and plaintexts never reach an error report:

* every function here that holds one is ``sensitive_variables``, so Django's error reports
  (``DEBUG=False``: the e-mail to ``ADMINS``, logged reports) show its locals as stars;
* a configuration error (no key, a malformed key) is raised by ``get_fernet`` in a frame
  that does not hold the keys, because a ``DEBUG=True`` error page shows every local
  variable unfiltered (Django's filter is only active with ``DEBUG=False``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.views.decorators.debug import sensitive_variables

from .conf import SETTING_NAME, getpaid_settings
from .exceptions import InvalidEncryptionKeyError, MissingEncryptionKeyError

__all__ = ["InvalidToken", "decrypt", "encrypt", "generate_key", "get_fernet", "rotate"]

_NO_KEYS = (
    f'No encryption key configured: set {SETTING_NAME}["ENCRYPTION_KEYS"] to a list '
    'of Fernet keys (generate one with `python -c "from cryptography.fernet import '
    'Fernet; print(Fernet.generate_key().decode())"`).'
)


@sensitive_variables()
def generate_key() -> str:
    """A new random key, ready to paste into ``ENCRYPTION_KEYS``."""
    return Fernet.generate_key().decode("ascii")


@sensitive_variables()
def configured_keys() -> list[str]:
    keys = getpaid_settings.ENCRYPTION_KEYS
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    # A non-ASCII bytes key becomes a string Fernet refuses (reported by key_problems).
    return [k.decode("ascii", "replace") if isinstance(k, bytes) else k for k in keys or []]


@sensitive_variables()
def key_problems(keys: Sequence[str]) -> list[str]:
    """Human-readable problems with the configured keys (position only, never the key)."""
    problems = []
    for index, key in enumerate(keys):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            problems.append(
                f'{SETTING_NAME}["ENCRYPTION_KEYS"][{index}] is not a valid Fernet key '
                "(32 url-safe base64-encoded bytes)."
            )
    return problems


@functools.lru_cache(maxsize=8)
@sensitive_variables()
def _build(keys: tuple[str, ...]) -> MultiFernet | str:
    """The MultiFernet for ``keys``, or (a string) why they cannot make one."""
    if not keys:
        return _NO_KEYS
    problems = key_problems(keys)
    if problems:
        return " ".join(problems)
    return MultiFernet([Fernet(key) for key in keys])


def get_fernet() -> MultiFernet:
    """The MultiFernet for the current settings (memoised by key list, so rotation is seen)."""
    built = _build(tuple(configured_keys()))
    if isinstance(built, MultiFernet):
        return built
    # Raised here, where no local variable holds a key (see the module docstring).
    if built == _NO_KEYS:
        raise MissingEncryptionKeyError(built)
    raise InvalidEncryptionKeyError(built)


@sensitive_variables()
def _token_bytes(token: Any) -> bytes:
    """A stored token as bytes; anything that cannot be a Fernet token is ``InvalidToken``.

    Legacy plaintext or corrupted data (non-ASCII text, a non-string) must read as
    "undecryptable", never as ``UnicodeEncodeError`` or ``AttributeError``.
    """
    if not isinstance(token, str):
        raise InvalidToken
    try:
        return token.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidToken from None


@sensitive_variables()
def encrypt(plaintext: str) -> str:
    return get_fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


@sensitive_variables()
def decrypt(token: str) -> str:
    """Decrypt, raising ``cryptography.fernet.InvalidToken`` when no key fits.

    Also ``InvalidToken`` for anything that is not a well-formed token (non-ASCII text,
    not a string, a payload that is not UTF-8).
    """
    fernet = get_fernet()
    data = fernet.decrypt(_token_bytes(token))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidToken from None


@sensitive_variables()
def rotate(token: str) -> str:
    """Re-encrypt a token with the first key (``InvalidToken`` when no key fits or malformed)."""
    fernet = get_fernet()
    return fernet.rotate(_token_bytes(token)).decode("ascii")
