"""An erased user's key is never written again, whatever was under way when the erasure came: Redis refuses
the writes (apply_batch.lua, write_fields.lua check the erased set, which the erase fills in the same
transaction as it deletes the key), not only the worker that has followed the erasure.

Each test is a race a reviewer found (GDPR erasure review): before, the key came back and lived out its TTL."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from cadence.runtime import Runtime
from engine.processor import Engine
from features.erasure import ErasureRegistry
from features.store import FeatureStoreError
from policy.lever_store import LeverStore
from tests.helpers import T0, event
from tests.integration.test_engine_on_redis import make_engine, msgs
from tests.web_views import Request, Response, Web, register_pages

pytestmark = pytest.mark.integration
PROFILED = {"device": "mobile", "segment": "vip", "consent": True}


def erase_view(engine: Engine) -> Any:
    """streams/web.py's POST /admin/erase-user on the real engine, ErasureRegistry and LeverStore."""
    async def tombstone(user_id: str, who: str) -> None:
        await asyncio.sleep(0.05)  # a Kafka produce and its ack: the worker goes on meanwhile

    client, ns = engine.store.client, engine.store.namespace
    registry = ErasureRegistry(client, ns, engine.store.user_digest)  # the worker's, key read at its start
    pages = register_pages(engine, LeverStore(client, ns), registry, tombstone, 1000.0)

    async def erase(user_id: str) -> Response:
        return await pages["/admin/erase-user"].post(Web(), Request({"user_id": user_id, "who": "dpo"}))
    return erase


async def cli_erase(engine: Engine, user_id: str) -> None:
    """What `cadence erase-user` does (cadence/cli.py), minus the tombstone: no worker is told."""
    client, ns = engine.store.client, engine.store.namespace
    registry = await ErasureRegistry.open(client, ns)  # reads the key from Redis, as the CLI does
    await registry.erase(user_id)
    await LeverStore(client, ns).update(lambda b: b.forget_user(user_id, registry.label(user_id)))


async def traces_of(engine: Engine, user_id: str) -> list[str]:
    """Keys of the engine's namespace that name the user or hold the id in their value."""
    client, found = engine.store.client, []
    async for raw in client.scan_iter(match=f"{engine.store.namespace}:*"):
        key = raw.decode()
        kind = await client.type(key)
        value = b""
        if kind == b"string":
            value = await client.get(key) or b""
        elif kind == b"hash":
            value = b" ".join(k + b"=" + v for k, v in (await client.hgetall(key)).items())
        elif kind == b"set":
            value = b" ".join(await client.smembers(key))
        if user_id in key or user_id.encode() in value:
            found.append(key)
    return found


def erased_fallback(out: Any, user_id: str) -> None:
    mine = [d for d in out.decisions if d.user_id == user_id]
    assert mine and all(d.trace.get("fallback") == "erased_user" for d in mine), [d.trace for d in mine]


def test_the_store_scripts_never_write_an_erased_users_key(runtime: Runtime) -> None:
    from contracts.events import parse_event
    from features.updates import update_for

    engine = make_engine(runtime)
    store = engine.store

    def upd(event_id: str, user_id: str) -> Any:
        parsed = parse_event(orjson.dumps(event(event_id, user_id=user_id, **PROFILED)), "web-events", 65536)
        return update_for(parsed)  # type: ignore[arg-type]

    async def go() -> tuple[Any, Any, dict[str, str | None], list[str], dict[str, str]]:
        await (await ErasureRegistry.open(store.client, store.namespace)).erase("gone")
        await store.client.hset(store.key("gone"), "seg", "vip")  # written back by a worker of before the check
        updates = [upd("a1", "gone"), upd("b1", "kept"), upd("a2", "gone")]
        results = await store.apply(updates)
        conflicts = await store.write_fields({"gone": {"pd:x": "1"}, "kept": {"pd:x": "1"}},
                                             {"gone": None, "kept": None}, "pd:x")
        return updates, results, conflicts, await traces_of(engine, "gone"), (await store.read("kept")).fields

    updates, results, conflicts, traces, kept = asyncio.run(go())
    assert [u.erased for u in updates] == [True, False, True]
    assert [r for r, _ in results] == [False, True, False] and results[0][1] is None
    assert conflicts == {} and traces == []
    assert kept["pd:x"] == "1" and kept["seg"] == "vip"


def test_an_event_before_the_worker_follows_a_cli_erasure_leaves_no_key(runtime: Runtime) -> None:
    # the erasure comes from the CLI (or another worker): this worker learns it only on its 1 s timer, and an
    # event of the user processed before that used to create the key again (nothing deleted it afterwards)
    engine = make_engine(runtime)

    async def go() -> tuple[Any, Any, list[str]]:
        await engine.process(msgs(event("e0", user_id="alice", **PROFILED)))
        await cli_erase(engine, "alice")
        first = await engine.process(msgs(event("e1", user_id="alice", ts=T0 + 1, **PROFILED)))
        known = engine.erased
        registry = await ErasureRegistry.open(engine.store.client, engine.store.namespace)
        engine.erased = await registry.erased_users()  # the timer
        later = await engine.process(msgs(event("e2", user_id="alice", ts=T0 + 2)))
        return (first, known, later), engine.metrics.erased_events._value.get(), await traces_of(engine, "alice")

    (first, known, later), counted, traces = asyncio.run(go())
    assert traces == []
    erased_fallback(first, "alice")
    erased_fallback(later, "alice")
    assert first.learning == [] and later.learning == []
    assert known is not None and "alice" in known  # learned from Redis' refusal, before the timer
    assert counted == 2


def test_a_batch_during_the_erase_request_on_the_same_worker_leaves_no_key(runtime: Runtime) -> None:
    # POST /admin/erase-user deleted the key first and told the engine only after the lever update and the
    # tombstone: a batch of the user in between wrote the key again
    engine = make_engine(runtime)
    erase = erase_view(engine)
    store = engine.store
    during: list[Any] = []

    async def intake() -> None:
        while not during:
            if not await store.client.exists(store.key("alice")):  # deleted, the view still going
                during.append(await engine.process(msgs(event("e1", user_id="alice", ts=T0 + 1, **PROFILED))))
            await asyncio.sleep(0)

    async def go() -> tuple[Any, list[str]]:
        await engine.process(msgs(event("e0", user_id="alice", **PROFILED)))
        task = asyncio.ensure_future(intake())
        response = await erase("alice")
        assert response.status == 200
        await asyncio.wait_for(task, 5)
        return during[0], await traces_of(engine, "alice")

    out, traces = asyncio.run(go())
    assert traces == []
    erased_fallback(out, "alice")
    assert out.learning == []


def test_a_later_chunk_of_a_batch_under_way_leaves_no_key(runtime: Runtime) -> None:
    # the engine filters erased users once per batch; a later chunk's call used to go out after the erasure
    engine = make_engine(runtime)
    erase = erase_view(engine)
    store = engine.store
    read_ahead = store._read_ahead
    held, first = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def slow_first_chunk(conn: Any, updates: Any) -> Any:
        calls.append(len(updates))
        if len(calls) == 1:
            first.set()
            await held.wait()  # Redis' reply to the first chunk not read yet
        return await read_ahead(conn, updates)

    async def go() -> tuple[Any, list[str]]:
        await engine.process(msgs(event("e0", user_id="alice", **PROFILED)))
        store._read_ahead = slow_first_chunk  # type: ignore[method-assign]
        docs = [event(f"o{k}", user_id=f"o{k}", ts=T0 + 1 + k * 0.01) for k in range(99)]
        docs.append(event("e1", user_id="alice", ts=T0 + 3, **PROFILED))  # in the batch's second chunk
        batch = asyncio.ensure_future(engine.process(msgs(*docs)))
        await first.wait()
        assert (await erase("alice")).status == 200
        held.set()
        out = await batch
        return out, await traces_of(engine, "alice")

    out, traces = asyncio.run(go())
    assert len(calls) >= 2
    assert traces == []
    erased_fallback(out, "alice")
    assert len([d for d in out.decisions if d.user_id != "alice"]) == 99  # the others decided as ever


def test_a_decision_state_write_waiting_for_its_turn_leaves_no_key(runtime: Runtime) -> None:
    # a batch's write waiting for an earlier batch's write is not among the kept writes the erasure drops
    engine = make_engine(runtime)
    erase = erase_view(engine)
    store = engine.store
    real_write = store.write_fields
    gate, entered = asyncio.Event(), asyncio.Event()

    async def write(writes: Any, *args: Any, **kwargs: Any) -> Any:
        if "bob" in writes:  # the earlier batch's write: Redis slow to answer it
            entered.set()
            await gate.wait()
        return await real_write(writes, *args, **kwargs)

    async def go() -> list[str]:
        await engine.process(msgs(event("e0", user_id="alice", **PROFILED)))
        store.write_fields = write  # type: ignore[method-assign]
        a = asyncio.ensure_future(engine.process(msgs(event("b1", user_id="bob", ts=T0 + 1))))
        await entered.wait()
        b = asyncio.ensure_future(engine.process(msgs(event("e1", user_id="alice", ts=T0 + 2))))
        await asyncio.sleep(0.2)  # decided; its write waits for the earlier one
        assert not b.done()
        assert (await erase("alice")).status == 200
        gate.set()
        await a
        out = await b
        assert [d.trace.get("fallback") for d in out.decisions] == [None]  # decided before the erasure
        return await traces_of(engine, "alice")

    assert asyncio.run(go()) == []


def test_updates_replayed_before_the_worker_follows_the_erasure_leave_no_key(runtime: Runtime) -> None:
    # updates kept through an outage were dropped only once the worker followed the erasure; a replay
    # before that wrote the erased user's profile back
    engine = make_engine(runtime)
    store = engine.store

    async def go() -> tuple[list[str], dict[str, str], bool]:
        await engine.process(msgs(event("e0", user_id="alice", consent=True)))
        real_apply, real_ahead = store.apply, store.apply_ahead

        async def down(*args: Any, **kwargs: Any) -> Any:
            raise FeatureStoreError("connection refused")

        store.apply = store.apply_ahead = down  # type: ignore[method-assign]
        await engine.process(msgs(event("e1", user_id="alice", ts=T0 + 1, device="mobile", segment="vip"),
                                  event("k1", user_id="kept", ts=T0 + 1, device="mobile")))
        store.apply, store.apply_ahead = real_apply, real_ahead  # type: ignore[method-assign]  # Redis back
        await cli_erase(engine, "alice")
        engine._store_retry_at = 0.0  # the breaker's second has passed
        await engine.flush_unapplied()  # the flush timer fires before the worker follows the erasure
        known = engine.erased is not None and "alice" in engine.erased
        return await traces_of(engine, "alice"), (await store.read("kept")).fields, known

    traces, kept, known = asyncio.run(go())
    assert traces == []
    assert kept.get("dev") == "mobile"  # the other user's update was replayed
    assert known  # learned from the replay's refusal
