"""GDPR erasure: delete a user's keys, remember (as a digest, never the id) not to learn from them again."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from features.keys import erased_key, user_digest, user_key

__all__ = ["ErasureRegistry", "erased_label", "user_digest"]


def erased_label(user_id: str) -> str:
    """What stands for an erased user where a record must say someone was meant (lever audit): no id."""
    return f"erased:{user_digest(user_id)[:12]}"


class ErasureRegistry:
    """``{ns}:erased`` holds digests of erased users; workers keep a copy and follow its generation, and the
    store's scripts (apply_batch.lua, write_fields.lua) never write the key of a user in it."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.set_key = erased_key(namespace)
        self.generation_key = f"{namespace}:erased:generation"

    async def erase(self, user_id: str) -> int:
        """Delete the user's key (``features.keys.user_key``: everything the engine keeps per user lives in
        it) and remember the digest; returns how many keys were deleted (0 or 1).

        The key is named exactly, never matched by a pattern: a pattern such as ``{ns}:*:{id}`` also
        matches other users' keys (``{ns}:u:alice:3`` for user ``3``) and the shared state in the namespace
        (``{ns}:snap:3``, ``{ns}:snap:index``), and erasing a user must delete nothing else.

        The delete and the digest go in one transaction (MULTI/EXEC): from then on the store's scripts
        refuse the user's writes, so a batch or a decision-state write of the user still under way on any
        worker, or replayed after an outage, cannot create the key again. Workers learn of the erasure from
        such a refusal or from the generation, whichever comes first."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(user_key(self.namespace, user_id))
            pipe.sadd(self.set_key, user_digest(user_id))
            pipe.incr(self.generation_key)
            deleted, _, _ = await pipe.execute()
        return int(deleted)

    async def generation(self) -> int:
        return int(await self.client.get(self.generation_key) or 0)

    async def digests(self) -> set[str]:
        return {cast(bytes, d).decode() for d in await self.client.smembers(self.set_key)}  # not decoded
