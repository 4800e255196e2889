"""Symmetric encryption with Fernet keys from ``GETPAID_AUTH["ENCRYPTION_KEYS"]``.

The first key encrypts; every key decrypts (``MultiFernet``), so keys can be rotated
without downtime. Keys are deliberately not derived from ``SECRET_KEY``: rotating
``SECRET_KEY`` must never make stored credentials unreadable.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .conf import SETTING_NAME, getpaid_settings
from .exceptions import InvalidEncryptionKeyError, MissingEncryptionKeyError

__all__ = ["InvalidToken", "decrypt", "encrypt", "generate_key", "get_fernet", "rotate"]


def generate_key() -> str:
    """A new random key, ready to paste into ``ENCRYPTION_KEYS``."""
    return Fernet.generate_key().decode("ascii")


def configured_keys() -> list[str]:
    keys = getpaid_settings.ENCRYPTION_KEYS
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    return [k.decode("ascii") if isinstance(k, bytes) else k for k in keys or []]


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
def _build(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise MissingEncryptionKeyError(
            f'No encryption key configured: set {SETTING_NAME}["ENCRYPTION_KEYS"] to a list '
            'of Fernet keys (generate one with `python -c "from cryptography.fernet import '
            'Fernet; print(Fernet.generate_key().decode())"`).'
        )
    problems = key_problems(keys)
    if problems:
        raise InvalidEncryptionKeyError(" ".join(problems))
    return MultiFernet([Fernet(key) for key in keys])


def get_fernet() -> MultiFernet:
    """The MultiFernet for the current settings (memoised by key list, so rotation is seen)."""
    return _build(tuple(configured_keys()))


def encrypt(plaintext: str) -> str:
    return get_fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """Decrypt, raising ``cryptography.fernet.InvalidToken`` when no key fits."""
    return get_fernet().decrypt(token.encode("ascii")).decode("utf-8")


def rotate(token: str) -> str:
    """Re-encrypt a token with the first key (raises ``InvalidToken`` when no key fits)."""
    return get_fernet().rotate(token.encode("ascii")).decode("ascii")
