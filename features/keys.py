"""Names of the Redis keys the engine keeps per user and for erasures, and the digest that stands for an erased
user (pure: the store, the erasure registry and the engine all name them the same way)."""

from __future__ import annotations

import functools
import hashlib


def user_key(namespace: str, user_id: str) -> str:
    """The one Redis key that holds a user's data: features, dedup ring, decision and policy state."""
    return f"{namespace}:u:{user_id}"


def erased_key(namespace: str) -> str:
    """The set of digests of erased users: the store's scripts never write the key of a user in it."""
    return f"{namespace}:erased"


@functools.lru_cache(maxsize=1 << 16)  # a worker sees the same active users again and again
def user_digest(user_id: str) -> str:
    return hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()
