"""The lever book and its audit on the real Redis: the book every worker reloads holds only the levers, the audit
is an append-only list written in the same transaction, trimmed to the newest CADENCE_LEVER_AUDIT_KEEP."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from cadence.runtime import Runtime
from policy.lever_store import LeverStore
from policy.levers import Lever, LeverBook, LeverKind

pytestmark = pytest.mark.integration
T0 = 1_780_000_000.0


def pin(i: int, user: str | None = None) -> Lever:
    return Lever(f"p{i}", LeverKind.PIN, "crm", f"sync {i}", action="offer_10pct", user_id=user or f"u{i}",
                 set_at=T0 + i)


def on_redis(rt: Runtime, go: Any, **kw: Any) -> Any:
    """``go(store, client)`` with a LeverStore of a fresh namespace; its own client (one event loop per test)."""
    async def run() -> Any:
        client = aioredis.Redis.from_url(rt.redis_url or "")
        try:
            return await go(LeverStore(client, f"lv{uuid.uuid4().hex[:8]}", **kw), client)
        finally:
            await client.aclose()
    return asyncio.run(run())


async def audit_list(store: LeverStore, client: aioredis.Redis) -> list[dict]:
    return [orjson.loads(raw) for raw in await client.lrange(f"{store.key}:audit", 0, -1)]


def test_the_book_workers_reload_does_not_grow_and_the_audit_list_has_every_change(runtime: Runtime) -> None:
    # an automated CRM integration pins per-user levers all day: the audit used to grow inside the one book every
    # worker parses again after any change
    async def go(store: LeverStore, client: aioredis.Redis) -> tuple[list[int], list[dict], int, LeverBook]:
        await store.update(lambda b: b.apply(Lever("ban", LeverKind.BAN, "ana", "stock", action="offer_10pct")))
        sizes = []
        for i in range(500):
            await store.update(lambda b, i=i: b.apply(pin(i)))
            await store.update(lambda b, i=i: b.revoke(f"p{i}", "crm", "over", T0 + i + 0.5))
            sizes.append(len(await client.get(store.key)))
        return sizes, await audit_list(store, client), await store.generation(), await store.load()

    sizes, audit, generation, book = on_redis(runtime, go)
    assert [lv.lever_id for lv in book.levers] == ["ban"]
    assert set(sizes) == {len(book.to_json())}  # the size of the active levers, change after change
    assert len(audit) == 1001 and generation == 1001
    assert [(a["change"], a["lever_id"]) for a in audit[:3]] == [("apply", "ban"), ("apply", "p0"), ("revoke", "p0")]
    assert [(a["change"], a["lever_id"]) for a in audit[-2:]] == [("apply", "p499"), ("revoke", "p499")]
    assert audit[1] == {"ts": T0, "who": "crm", "why": "sync 0", "change": "apply", "lever_id": "p0",
                        "lever": pin(0).to_dict()}


def test_the_audit_list_keeps_the_newest_entries_and_reads_the_newest_n(runtime: Runtime) -> None:
    async def go(store: LeverStore, client: aioredis.Redis) -> tuple[list[dict], list[str], list[str]]:
        for i in range(25):
            await store.update(lambda b, i=i: b.apply(pin(i)))
        return (await audit_list(store, client), [a.lever_id for a in await store.audit(3)],
                [a.lever_id for a in await store.audit(100)])

    audit, last3, last100 = on_redis(runtime, go, audit_keep=10)
    assert [a["lever_id"] for a in audit] == [f"p{i}" for i in range(15, 25)]
    assert last3 == ["p22", "p23", "p24"] and last100 == [f"p{i}" for i in range(15, 25)]


def old_format_book(n: int) -> tuple[bytes, list[dict]]:
    """A book as the previous release stored it: the audit inside the JSON."""
    old = LeverBook()
    for i in range(n):
        old.apply(pin(i, user="alice" if i % 2 else None))
    records = [dataclasses.asdict(r) for r in old.pending_audit]
    return orjson.dumps({"levers": [lv.to_dict() for lv in old.levers], "audit": records}), records


def test_a_book_of_the_previous_release_moves_its_audit_to_the_list_on_the_first_change(runtime: Runtime) -> None:
    raw, records = old_format_book(40)

    async def go(store: LeverStore, client: aioredis.Redis) -> tuple[list[dict], dict, int]:
        await client.set(store.key, raw)
        await store.update(lambda b: b.revoke("p0", "ana", "over", T0 + 100))
        return await audit_list(store, client), orjson.loads(await client.get(store.key)), await store.generation()

    audit, book, generation = on_redis(runtime, go)
    assert audit[:40] == records and (audit[40]["change"], audit[40]["lever_id"]) == ("revoke", "p0")
    assert book["audit"] == [] and len(book["levers"]) == 39 and generation == 1


def test_a_book_of_the_previous_release_moves_its_audit_to_the_list_when_loaded(runtime: Runtime) -> None:
    raw, records = old_format_book(40)

    async def go(store: LeverStore, client: aioredis.Redis) -> tuple[LeverBook, list[dict], dict, int]:
        await client.set(store.key, raw)
        book = await store.load()
        return book, await audit_list(store, client), orjson.loads(await client.get(store.key)), \
            await store.generation()

    book, audit, stored, generation = on_redis(runtime, go)
    assert audit == records and stored["audit"] == [] and len(book.levers) == 40 and book.pending_audit == []
    assert generation == 0  # the levers did not change: no worker needs to reload


def test_erasure_rewrites_the_users_entries_in_the_audit_list(runtime: Runtime) -> None:
    raw, _ = old_format_book(6)  # alice's p1, p3, p5 in the old book's audit, moved by the erasure itself

    async def go(store: LeverStore, client: aioredis.Redis) -> tuple[LeverBook, list[dict], bytes]:
        await client.set(store.key, raw)
        await store.update(lambda b: b.apply(pin(7, user="alice")))
        await store.update(lambda b: b.apply(pin(8, user="bob")))
        book = await store.update(lambda b: b.forget_user("alice", "erased:0123456789ab"))
        values = b"".join(await client.lrange(f"{store.key}:audit", 0, -1)) + (await client.get(store.key) or b"")
        return book, await audit_list(store, client), values

    book, audit, values = on_redis(runtime, go)
    assert sorted(lv.lever_id for lv in book.levers) == ["p0", "p2", "p4", "p8"]
    assert b"alice" not in values
    users = [(a["lever_id"], a["lever"]["user_id"]) for a in audit]
    assert users == [("p0", "u0"), ("p1", "erased:0123456789ab"), ("p2", "u2"), ("p3", "erased:0123456789ab"),
                     ("p4", "u4"), ("p5", "erased:0123456789ab"), ("p7", "erased:0123456789ab"), ("p8", "bob")]
    assert [a["who"] for a in audit] == ["crm"] * 8  # who did what stays
