"""Passwords (Argon2id), API tokens and session ids: made, hashed and checked here only.

- Passwords are hashed with Argon2id, RFC 9106's low-memory profile (t=3, m=64 MiB, p=4), by
  ``argon2-cffi``. Hashing is slow on purpose (about 0.1 s): callers run it in a thread.
- An API token is ``pm_<8 hex>_<43 url-safe characters>`` (256 random bits after the prefix).
  The store keeps its SHA-256 and the ``pm_<8 hex>`` prefix, by which people tell tokens
  apart; SHA-256 is enough for a secret with 256 bits of entropy (no dictionary to try).
- A session id is 32 random bytes; the cookie carries it with an HMAC-SHA256 tag made with the
  manager's session key (``data_dir/session.key``), so a forged cookie is refused without a
  database lookup. The store keeps the id's SHA-256.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "MIN_PASSWORD",
    "TOKEN_PREFIX",
    "NewToken",
    "PasswordPolicyError",
    "check_password_policy",
    "digest",
    "hash_password",
    "needs_rehash",
    "new_password",
    "new_session_id",
    "new_token",
    "sign",
    "token_prefix",
    "unsign",
    "verify_password",
]

TOKEN_PREFIX = "pm_"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # Argon2 hashes anything, but a megabyte "password" is an attack

_HASHER = PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when a user name does not exist, so that the answer takes as long."""
    return _HASHER.hash(secrets.token_urlsafe(16))


class PasswordPolicyError(ValueError):
    """A new password is too short or too long."""


def check_password_policy(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise PasswordPolicyError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordPolicyError(f"a password has at most {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    """An Argon2id PHC string (``$argon2id$v=19$m=65536,t=3,p=4$…``)."""
    return _HASHER.hash(check_password_policy(password))


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored`` (None: an unknown user, checked all the same)."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _HASHER.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters (rehash at the next login)."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def new_password() -> str:
    """A random password people can type: 16 url-safe characters (96 bits)."""
    return secrets.token_urlsafe(12)


def digest(secret: str) -> str:
    """The hex SHA-256 under which a token or a session id is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewToken:
    token: str  # shown once, never stored
    prefix: str  # pm_1a2b3c4d: stored, shown in lists
    digest: str  # stored


def new_token() -> NewToken:
    token = f"{TOKEN_PREFIX}{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    return NewToken(token, token_prefix(token) or "", digest(token))


def token_prefix(token: str) -> str | None:
    """``pm_1a2b3c4d`` of a well-formed token (``pm_`` + 8 hex + ``_`` + the secret), else None.

    The secret is url-safe base64 and may itself hold ``_``: the prefix is found by position.
    """
    cut = len(TOKEN_PREFIX) + 8
    head, sep, rest = token[:cut], token[cut : cut + 1], token[cut + 1 :]
    if not head.startswith(TOKEN_PREFIX) or sep != "_" or len(rest) < 32 or len(rest) > 128:
        return None
    if not all(c in "0123456789abcdef" for c in head[len(TOKEN_PREFIX) :]):
        return None
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in rest):
        return None
    return head


def new_session_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def sign(value: str, key: bytes) -> str:
    """``value.tag``: the HMAC-SHA256 tag (128 bits, url-safe) of ``value`` under ``key``."""
    tag = hmac.new(key, value.encode(), hashlib.sha256).digest()[:16]
    return f"{value}.{base64.urlsafe_b64encode(tag).rstrip(b'=').decode()}"


def unsign(signed: str, key: bytes) -> str | None:
    """The value of a signed string, or None when the tag does not match (forged, other key)."""
    if len(signed) > 256:
        return None
    value, sep, _ = signed.rpartition(".")
    if not sep or not value:
        return None
    return value if hmac.compare_digest(sign(value, key), signed) else None
