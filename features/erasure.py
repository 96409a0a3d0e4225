"""GDPR erasure: delete a user's keys, remember (as a digest, never the id) not to learn from them again."""

from __future__ import annotations

import functools
import hashlib
from typing import cast

import redis.asyncio as aioredis


@functools.lru_cache(maxsize=1 << 16)  # a worker sees the same active users again and again
def user_digest(user_id: str) -> str:
    return hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()


class ErasureRegistry:
    """``{ns}:erased`` holds digests of erased users; workers keep a copy and follow its generation."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.set_key = f"{namespace}:erased"
        self.generation_key = f"{namespace}:erased:generation"

    async def erase(self, user_id: str) -> int:
        """Delete every key of the user (one SCAN of the namespace); returns how many were deleted."""
        deleted = 0
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in user_id)
        patterns = [f"{self.namespace}:u:{escaped}", f"{self.namespace}:*:{escaped}"]
        keys: set[bytes] = set()
        for pattern in patterns:
            async for key in self.client.scan_iter(match=pattern, count=1000):
                keys.add(key)
        if keys:
            deleted = int(await self.client.delete(*keys))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(self.set_key, user_digest(user_id))
            pipe.incr(self.generation_key)
            await pipe.execute()
        return deleted

    async def generation(self) -> int:
        return int(await self.client.get(self.generation_key) or 0)

    async def digests(self) -> set[str]:
        return {cast(bytes, d).decode() for d in await self.client.smembers(self.set_key)}  # not decoded
