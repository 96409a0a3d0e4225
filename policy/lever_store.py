"""Levers shared by every worker: the LeverBook as JSON in Redis, with a generation counter to follow.

Changes (from the CLI or the admin endpoints) are read-modify-write under WATCH, so two operators
cannot overwrite each other; every worker reloads the book within a second of a change.
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from policy.levers import LeverBook


class LeverStore:
    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.key = f"{namespace}:levers"
        self.generation_key = f"{namespace}:levers:generation"

    async def load(self) -> LeverBook:
        raw = await self.client.get(self.key)
        return LeverBook.from_json(raw) if raw else LeverBook()

    async def generation(self) -> int:
        return int(await self.client.get(self.generation_key) or 0)

    async def update(self, change: Callable[[LeverBook], object]) -> LeverBook:
        """Apply ``change`` to the current book and store it; retried if someone else wrote meanwhile."""
        book = LeverBook()

        async def txn(pipe: aioredis.client.Pipeline) -> None:
            nonlocal book
            raw = await pipe.get(self.key)
            book = LeverBook.from_json(raw) if raw else LeverBook()
            change(book)  # raises LeverError for a bad change: nothing is written
            pipe.multi()
            pipe.set(self.key, book.to_json())
            pipe.incr(self.generation_key)

        await self.client.transaction(txn, self.key)
        return book
