"""GDPR erasure: delete a user's keys, remember (as a digest, never the id) not to learn from them again."""

from __future__ import annotations

import functools
import hashlib
from typing import cast

import redis.asyncio as aioredis

from features.store import user_key


@functools.lru_cache(maxsize=1 << 16)  # a worker sees the same active users again and again
def user_digest(user_id: str) -> str:
    return hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()


def erased_label(user_id: str) -> str:
    """What stands for an erased user where a record must say someone was meant (lever audit): no id."""
    return f"erased:{user_digest(user_id)[:12]}"


class ErasureRegistry:
    """``{ns}:erased`` holds digests of erased users; workers keep a copy and follow its generation."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.set_key = f"{namespace}:erased"
        self.generation_key = f"{namespace}:erased:generation"

    async def erase(self, user_id: str) -> int:
        """Delete the user's key (``features.store.user_key``: everything the engine keeps per user lives in
        it) and remember the digest; returns how many keys were deleted (0 or 1).

        The key is named exactly, never matched by a pattern: a pattern such as ``{ns}:*:{id}`` also
        matches other users' keys (``{ns}:u:alice:3`` for user ``3``) and the shared state in the namespace
        (``{ns}:snap:3``, ``{ns}:snap:index``), and erasing a user must delete nothing else."""
        deleted = int(await self.client.delete(user_key(self.namespace, user_id)))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(self.set_key, user_digest(user_id))
            pipe.incr(self.generation_key)
            await pipe.execute()
        return deleted

    async def generation(self) -> int:
        return int(await self.client.get(self.generation_key) or 0)

    async def digests(self) -> set[str]:
        return {cast(bytes, d).decode() for d in await self.client.smembers(self.set_key)}  # not decoded
