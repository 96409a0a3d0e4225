"""Names of the Redis keys the engine keeps per user and for erasures, and the digests that stand for an erased
user (pure: the store, the erasure registry and the engine all name them the same way)."""

from __future__ import annotations

import functools
import hashlib

DIGEST_CACHE = 1 << 16  # user ids whose digest is kept: a worker sees the same active users again and again
_KEY_ID_MESSAGE = b"cadence erasure key id"
# copied per digest: a copy costs less than a new hasher's set-up (a keyed one's the most: it hashes the key first)
_EMPTY_LEGACY_DIGEST = hashlib.blake2b(digest_size=16)


def user_key(namespace: str, user_id: str) -> str:
    """The one Redis key that holds a user's data: features, dedup ring, decision and policy state."""
    return f"{namespace}:u:{user_id}"


def erased_key(namespace: str) -> str:
    """The set of keyed digests (``UserDigest``) of erased users: the store's scripts never write the key of a
    user in it."""
    return f"{namespace}:erased:v2"


def legacy_erased_key(namespace: str) -> str:
    """The set of unkeyed digests (``legacy_user_digest``) of the users erased before digests were keyed: never
    written again, still honoured by every worker (``features.erasure.ErasedUsers``)."""
    return f"{namespace}:erased"


def stored_erasure_key(namespace: str) -> str:
    """Where the erasure key is kept when ``CADENCE_ERASURE_KEY`` is unset (generated once, SET NX)."""
    return f"{namespace}:erased:key"


def erasure_key_id_key(namespace: str) -> str:
    """The id (``UserDigest.key_id``) of the key the digests in ``erased_key`` were made with: a process
    with another key refuses to start instead of silently missing those erasures."""
    return f"{namespace}:erased:key-id"


@functools.lru_cache(maxsize=DIGEST_CACHE)
def legacy_user_digest(user_id: str) -> str:
    """The unkeyed digest erasures were recorded with before keyed digests (``{ns}:erased``). Anyone can
    compute it, so whoever read that set could test ids against it: only checked, never written again."""
    digest = _EMPTY_LEGACY_DIGEST.copy()
    digest.update(user_id.encode())
    return digest.hexdigest()


class UserDigest:
    """The digest that stands for a user where the id must not (the erased set, the lever audit, the churn
    labeller): BLAKE2b keyed with the deployment's erasure key, a MAC, so neither the digest of an id nor the
    id behind a digest can be found without the key.

    ``of(user_id)`` is cached per user id (it runs per event); the key lives only inside it, never in an
    attribute, ``repr`` or log. ``key_id`` names the key without revealing it (a MAC of a constant), so
    processes can check they use the same one."""

    __slots__ = ("key_id", "of")

    def __init__(self, key: bytes, cache_size: int = DIGEST_CACHE) -> None:
        if not 16 <= len(key) <= 64:
            raise ValueError(f"an erasure key has 16 to 64 bytes, got {len(key)}")
        self.key_id = hashlib.blake2b(_KEY_ID_MESSAGE, key=key, digest_size=8).hexdigest()

        empty_keyed = hashlib.blake2b(key=key, digest_size=16)

        def keyed(user_id: str) -> str:
            digest = empty_keyed.copy()
            digest.update(user_id.encode())
            return digest.hexdigest()

        self.of = functools.lru_cache(maxsize=cache_size)(keyed)

    @classmethod
    def from_secret(cls, secret: str) -> UserDigest:
        """The digest for an erasure key given as text (``CADENCE_ERASURE_KEY``, or the one kept in Redis):
        text of any length, hashed to BLAKE2b's 32-byte key, so the same text gives the same key everywhere."""
        return cls(hashlib.blake2b(secret.encode(), digest_size=32, person=b"cadence-erasure").digest())

    def __repr__(self) -> str:
        return f"UserDigest(key_id={self.key_id!r})"
