"""The digest that stands for an erased user is a MAC of the id (keyed BLAKE2b): the same for every process
with the deployment's key, impossible to reproduce without it, and the key never shows."""

from __future__ import annotations

import hashlib

import pytest

from features.erasure import ErasedUsers
from features.keys import UserDigest, legacy_user_digest

KEY_TEXT = "0123456789abcdef0123456789abcdef-a-key"


def test_the_digest_needs_the_key_and_the_same_key_gives_the_same_digest() -> None:
    digest = UserDigest.from_secret(KEY_TEXT)
    unkeyed = hashlib.blake2b(b"123456", digest_size=16).hexdigest()
    assert digest.of("123456") != unkeyed == legacy_user_digest("123456")
    assert UserDigest.from_secret(KEY_TEXT).of("123456") == digest.of("123456")  # another process, same key
    assert UserDigest.from_secret(KEY_TEXT + "!").of("123456") != digest.of("123456")
    assert len(digest.of("123456")) == 32 and UserDigest.from_secret(KEY_TEXT).key_id == digest.key_id
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        UserDigest(b"short")


def test_the_key_never_shows() -> None:
    derived = hashlib.blake2b(KEY_TEXT.encode(), digest_size=32, person=b"cadence-erasure").digest()
    digest = UserDigest.from_secret(KEY_TEXT)
    erased = ErasedUsers(digest, [digest.of("u1")], [legacy_user_digest("u0")])
    shown = repr(digest) + repr(erased) + str(erased) + repr(dir(digest))
    for secret in (KEY_TEXT, derived.hex(), repr(derived)):
        assert secret not in shown
    assert not hasattr(digest, "__dict__")  # nothing but key_id and the cached function


def test_erased_users_are_matched_by_keyed_and_legacy_digests() -> None:
    digest = UserDigest.from_secret(KEY_TEXT)
    erased = ErasedUsers(digest, [digest.of("new")], [legacy_user_digest("old")])
    assert "new" in erased and "old" in erased and "other" not in erased
    grown = erased.with_users(["refused"])
    assert "refused" in grown and "refused" not in erased
    assert {u for u in ("new", "old", "refused") if u in grown.since(erased)} == {"refused"}


def test_without_legacy_entries_no_unkeyed_digest_is_computed() -> None:
    # the hot path: one cached keyed digest per user, the unkeyed one only while legacy entries exist
    digest = UserDigest.from_secret(KEY_TEXT)
    erased = ErasedUsers(digest, [digest.of("new")])
    before = legacy_user_digest.cache_info()
    assert "somebody-never-seen" not in erased
    assert legacy_user_digest.cache_info() == before
