"""Passwords, tokens and signed session ids: what is stored can never be used to log in."""

from __future__ import annotations

import pytest

from piman.access.secrets import (
    MIN_PASSWORD,
    PasswordPolicyError,
    digest,
    hash_password,
    needs_rehash,
    new_session_id,
    new_token,
    sign,
    token_prefix,
    unsign,
    verify_password,
)


def test_passwords_are_argon2id_hashes_that_verify_only_the_right_password() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert "correct horse" not in stored
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct horsf")
    assert hash_password("correct horse") != stored  # salted
    assert not needs_rehash(stored)


def test_an_unknown_user_is_checked_against_a_dummy_hash_and_fails() -> None:
    assert not verify_password(None, "anything at all")


def test_password_policy_bounds_length() -> None:
    with pytest.raises(PasswordPolicyError, match=f"at least {MIN_PASSWORD}"):
        hash_password("short")
    with pytest.raises(PasswordPolicyError, match="at most"):
        hash_password("x" * 2000)
    assert not verify_password(hash_password("long enough"), "y" * 5000)


def test_a_token_is_stored_as_its_digest_and_identified_by_its_prefix() -> None:
    made = new_token()
    assert made.token.startswith(made.prefix + "_")
    assert made.digest == digest(made.token)
    assert made.token not in made.digest
    assert len(made.prefix) == len("pm_") + 8
    assert new_token().token != made.token


def test_every_token_made_has_a_readable_prefix_even_with_underscores_inside() -> None:
    tokens = [new_token() for _ in range(2000)]  # about 1 in 2 holds an "_" in its secret
    assert sum("_" in t.token[12:] for t in tokens) > 100
    assert all(token_prefix(t.token) == t.prefix for t in tokens)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pm_",
        "pm_12345678",
        "pm_12345678_short",
        "pm_1234567g_" + "a" * 43,  # not hex
        "xx_12345678_" + "a" * 43,
        "pm_12345678-" + "a" * 43,
        "pm_12345678_" + "a" * 42 + "é",
        "Bearer pm_12345678_" + "a" * 43,
    ],
)
def test_malformed_tokens_have_no_prefix(text: str) -> None:
    assert token_prefix(text) is None


def test_signed_session_ids_refuse_forgery_and_other_keys() -> None:
    key, other = b"k" * 32, b"o" * 32
    sid = new_session_id()
    cookie = sign(sid, key)
    assert unsign(cookie, key) == sid
    assert unsign(cookie, other) is None
    assert unsign(sid, key) is None  # unsigned
    assert unsign(cookie[:-1] + ("A" if cookie[-1] != "A" else "B"), key) is None
    assert unsign(new_session_id() + cookie[cookie.rindex(".") :], key) is None  # tag swap
    assert unsign("x" * 300, key) is None
