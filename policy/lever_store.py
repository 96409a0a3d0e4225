"""Levers shared by every worker: the LeverBook as JSON in Redis, with a generation counter to follow, and its
audit as an append-only list.

Keys (``ns`` is the app id):

- ``{ns}:levers``: the book, the levers only (every worker reloads it after any change);
- ``{ns}:levers:generation``: incremented with each change, what workers follow;
- ``{ns}:levers:audit``: one JSON :class:`AuditRecord` per change, oldest first, trimmed to the newest
  ``audit_keep`` (``CADENCE_LEVER_AUDIT_KEEP``).

Changes (from the CLI or the admin endpoints) are read-modify-write under WATCH, so two operators cannot
overwrite each other; a change and its audit record are written in the same transaction. A book of the previous
release, with the audit inside it, has its records moved to the list (in order) by the first change or load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis

from policy.levers import AuditRecord, LeverBook, redact

log = logging.getLogger(__name__)

AUDIT_KEEP = 100_000  # default of CADENCE_LEVER_AUDIT_KEEP
AUDIT_SCAN_CHUNK = 1000  # audit entries read at a time when an erasure looks for a user's


class LeverStore:
    def __init__(self, client: aioredis.Redis, namespace: str, audit_keep: int = AUDIT_KEEP) -> None:
        if audit_keep < 1:
            raise ValueError(f"audit_keep must be at least 1, got {audit_keep}")
        self.client = client
        self.key = f"{namespace}:levers"
        self.generation_key = f"{namespace}:levers:generation"
        self.audit_key = f"{namespace}:levers:audit"
        self.audit_keep = audit_keep

    async def load(self) -> LeverBook:
        """The book; one stored by the previous release (audit inside) first moves its audit to the list."""
        raw = await self.client.get(self.key)
        if not raw:
            return LeverBook()
        book = LeverBook.from_json(raw)
        if book.pending_audit:  # the levers are the same: no generation, no worker reloads for it
            return await self._write(lambda b: None, announce=False)
        return book

    async def generation(self) -> int:
        return int(await self.client.get(self.generation_key) or 0)

    async def audit(self, last: int) -> list[AuditRecord]:
        """The newest ``last`` audit records, oldest first (LRANGE of the list's tail, never the whole list)."""
        if last <= 0:
            return []
        return [AuditRecord.from_json(raw) for raw in await self.client.lrange(self.audit_key, -last, -1)]

    async def audit_length(self) -> int:
        """How many audit records the list holds (at most ``audit_keep``)."""
        return int(await self.client.llen(self.audit_key))

    async def update(self, change: Callable[[LeverBook], object]) -> LeverBook:
        """Apply ``change`` to the current book and store it, with its audit records; retried if someone else
        wrote meanwhile."""
        return await self._write(change, announce=True)

    async def _write(self, change: Callable[[LeverBook], object], announce: bool) -> LeverBook:
        book = LeverBook()
        dropped = 0

        async def txn(pipe: aioredis.client.Pipeline) -> None:
            nonlocal book, dropped
            raw = await pipe.get(self.key)
            book = LeverBook.from_json(raw) if raw else LeverBook()
            change(book)  # raises LeverError for a bad change: nothing is written
            records = book.take_audit()  # an old book's audit first, then this change's
            rewrites: dict[int, bytes] = {}
            for user_id, replacement in book.take_redactions():
                rewrites.update(await self._redacted(pipe, user_id, replacement, rewrites))
            length = await pipe.llen(self.audit_key) if records else 0
            pipe.multi()
            for index, entry in rewrites.items():
                pipe.lset(self.audit_key, index, entry.decode())  # redis-py types it str; stored as the same bytes
            if records:
                pipe.rpush(self.audit_key, *(r.to_json() for r in records))
                pipe.ltrim(self.audit_key, -self.audit_keep, -1)
            pipe.set(self.key, book.to_json())
            if announce:
                pipe.incr(self.generation_key)
            dropped = max(0, length + len(records) - self.audit_keep)

        await self.client.transaction(txn, self.key, self.audit_key)
        if dropped:
            log.warning("lever audit: dropped the %d oldest entries, %s keeps the newest %d "
                        "(CADENCE_LEVER_AUDIT_KEEP)", dropped, self.audit_key, self.audit_keep)
        return book

    async def _redacted(self, pipe: aioredis.client.Pipeline, user_id: str, replacement: str,
                        done: dict[int, bytes]) -> dict[int, bytes]:
        """The audit entries naming ``user_id`` (index -> entry with ``replacement``), read under WATCH in
        chunks: the list may hold ``audit_keep`` entries, and the event loop serves decisions meanwhile."""
        needle = orjson.dumps({"user_id": user_id})[1:-1]  # '"user_id":"…"' as the entries are written
        out: dict[int, bytes] = {}
        start = 0
        while chunk := await pipe.lrange(self.audit_key, start, start + AUDIT_SCAN_CHUNK - 1):
            for offset, entry in enumerate(chunk):
                index = start + offset
                entry = done.get(index, entry)
                if needle in entry:
                    record = AuditRecord.from_json(entry)
                    redacted = redact(record, user_id, replacement)
                    if redacted is not record:
                        out[index] = redacted.to_json()
            start += len(chunk)
        return out
