"""The digests that stand for erased users are keyed (features/keys.py UserDigest): whoever reads Redis or a
dump of it cannot tell who asked to be erased by hashing candidate ids. Every process of a deployment uses the
same key (CADENCE_ERASURE_KEY, or one generated once and kept in Redis), a process with another key refuses to
start, and users erased before digests were keyed (unkeyed digests in ``{ns}:erased``) stay refused.

A reviewer reversed the unkeyed digests over a 6-digit id space in 0.9 s (GDPR erasure review)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from bandits import make_policy
from cadence.metrics import Metrics
from cadence.runtime import Runtime
from cadence.settings import DEFAULT_CATALOGUE
from engine.processor import Engine, EngineConfig
from features.context import CONTEXT_DIM
from features.erasure import ErasureKeyError, ErasureRegistry, load_erasure_key
from features.keys import UserDigest
from features.store import RedisFeatureStore
from policy.catalogue import load_catalogue
from policy.pipeline import PolicyContext
from tests.helpers import T0, event
from tests.integration.test_engine_on_redis import make_engine, msgs
from tests.integration.test_erasure_races import PROFILED, erased_fallback, traces_of

pytestmark = pytest.mark.integration
SECRET = "a-test-erasure-key-of-forty-characters!!"


def unkeyed(user_id: str) -> str:
    """The digest erasures were recorded with before (anyone can compute it)."""
    return hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()


def namespace() -> str:
    return f"ek{uuid.uuid4().hex[:8]}"


async def everything_in(client: aioredis.Redis, ns: str) -> bytes:
    """Every key name and value of the namespace, as one blob to search."""
    blob = []
    async for key in client.scan_iter(match=f"{ns}:*"):
        kind = await client.type(key)
        blob.append(key)
        if kind == b"string":
            blob.append(await client.get(key) or b"")
        elif kind == b"set":
            blob.extend(await client.smembers(key))
        elif kind == b"hash":
            blob.extend(k + b"=" + v for k, v in (await client.hgetall(key)).items())
    return b" ".join(blob)


def unstarted_worker(rt: Runtime, ns: str) -> Engine:
    """An engine as ``streams.app.build_engine`` makes it: its store has no erasure key until the start."""
    store = RedisFeatureStore(aioredis.Redis.from_url(rt.redis_url or ""), ns, ttl_s=3600, dedup_ring=16)
    return Engine(store, PolicyContext(load_catalogue(DEFAULT_CATALOGUE)), make_policy("linucb", CONTEXT_DIM, seed=1),
                  Metrics(), EngineConfig())


async def start(engine: Engine, configured: SecretStr | None = None) -> ErasureRegistry:
    """What the worker's start does (streams/app.py start_learning, follow_shared_state): read the key, then
    the erased users, which binds the store to the key."""
    registry = ErasureRegistry(engine.store.client, engine.store.namespace)
    await registry.load_key(configured)
    engine.erased = await registry.erased_users()
    return registry


def test_the_recorded_digest_cannot_be_made_without_the_deployments_key(runtime: Runtime) -> None:
    engine = make_engine(runtime)  # no CADENCE_ERASURE_KEY: the key is generated and kept in Redis
    client, ns = engine.store.client, engine.store.namespace

    async def go() -> tuple[set[bytes], bytes, bytes, str]:
        await engine.process(msgs(event("e0", user_id="123456", **PROFILED)))
        registry = await ErasureRegistry.open(client, ns)
        await registry.erase("123456")
        label = registry.label("123456")
        return (await client.smembers(f"{ns}:erased:v2"), await client.get(f"{ns}:erased:key") or b"",
                await everything_in(client, ns), label)

    recorded, stored_key, everything, label = asyncio.run(go())
    keyed = UserDigest.from_secret(stored_key.decode()).of("123456")
    assert recorded == {keyed.encode()}
    assert unkeyed("123456").encode() not in everything  # not in the sets, nor anywhere else in Redis
    assert keyed != unkeyed("123456") and label == f"erased:{keyed[:12]}"
    assert len(bytes.fromhex(stored_key.decode())) == 32  # 32 random bytes, generated once


def test_with_the_setting_the_key_is_the_settings_and_never_kept_in_redis(runtime: Runtime) -> None:
    ns = namespace()
    engine = unstarted_worker(runtime, ns)
    client = engine.store.client

    async def go() -> tuple[set[bytes], int, bytes]:
        registry = await start(engine, SecretStr(SECRET))
        await registry.erase("123456")
        return (await client.smembers(f"{ns}:erased:v2"), await client.exists(f"{ns}:erased:key"),
                await everything_in(client, ns))

    recorded, key_kept, everything = asyncio.run(go())
    assert recorded == {UserDigest.from_secret(SECRET).of("123456").encode()}
    assert key_kept == 0 and SECRET.encode() not in everything
    assert unkeyed("123456").encode() not in everything


def test_two_processes_without_the_setting_agree_on_the_key_and_both_refuse_the_user(runtime: Runtime) -> None:
    ns = namespace()
    first, second = unstarted_worker(runtime, ns), unstarted_worker(runtime, ns)

    async def go() -> tuple[Any, Any, list[str], str, str]:
        # both start at once on a Redis without a key: one generates it (SET NX), both read that one
        keys = await asyncio.gather(load_erasure_key(first.store.client, ns, None),
                                    load_erasure_key(second.store.client, ns, None))
        await start(first)
        await start(second)
        await first.process(msgs(event("e0", user_id="alice", **PROFILED)))
        cli_client = aioredis.Redis.from_url(runtime.redis_url or "")  # `cadence erase-user`: a third process
        await (await ErasureRegistry.open(cli_client, ns)).erase("alice")
        await cli_client.aclose()
        # neither worker has followed the erasure yet: Redis' check of the keyed digest refuses the writes
        by_first = await first.process(msgs(event("e1", user_id="alice", ts=T0 + 1, **PROFILED)))
        by_second = await second.process(msgs(event("e2", user_id="alice", ts=T0 + 2, **PROFILED)))
        return by_first, by_second, await traces_of(first, "alice"), keys[0].digest.key_id, keys[1].digest.key_id

    by_first, by_second, traces, first_id, second_id = asyncio.run(go())
    assert first_id == second_id
    erased_fallback(by_first, "alice")
    erased_fallback(by_second, "alice")
    assert by_first.learning == [] and by_second.learning == []
    assert traces == []


def test_a_user_erased_before_the_upgrade_stays_refused(runtime: Runtime) -> None:
    # an older release recorded erasures as unkeyed digests in {ns}:erased; they cannot be re-keyed (one-way),
    # and the store scripts check only the keyed set: the worker refuses them itself, from its first batch
    ns = namespace()
    engine = unstarted_worker(runtime, ns)
    client = engine.store.client

    async def go() -> tuple[Any, Any, Any, list[str], dict[str, str]]:
        await client.sadd(f"{ns}:erased", unkeyed("old-erasure"))
        before_start = await engine.process(msgs(event("e0", user_id="old-erasure", **PROFILED)))
        await start(engine)
        engine._store_retry_at = 0.0  # the breaker's second has passed
        after = await engine.process(msgs(event("e1", user_id="old-erasure", ts=T0 + 1, **PROFILED)))
        email = await engine.process(msgs(event("e2", "old-erasure", ts=T0 + 2, etype="email_request",
                                                placement="newsletter"), topic="email-events"))
        await engine.process(msgs(event("k1", user_id="kept", ts=T0 + 3, **PROFILED)))
        await engine.flush_unapplied()
        return (before_start, after, email, await traces_of(engine, "old-erasure"),
                (await engine.store.read("kept")).fields)

    before_start, after, email, traces, kept = asyncio.run(go())
    # before the worker has read the key and the erased users its store writes nothing at all
    assert {d.trace.get("fallback") for d in before_start.decisions} == {"feature_store_unavailable"}
    erased_fallback(after, "old-erasure")
    erased_fallback(email, "old-erasure")
    assert after.learning == [] and email.learning == []
    assert traces == []  # nothing written for them: not before the start, not after, not the kept update
    assert kept.get("seg") == "vip"  # the others as ever
    assert engine.metrics.erased_events._value.get() == 2


def test_a_process_with_another_key_refuses_to_start_and_changes_nothing(runtime: Runtime) -> None:
    ns = namespace()

    async def go() -> tuple[list[str], bytes, bytes]:
        client = aioredis.Redis.from_url(runtime.redis_url or "")
        errors = []
        # the workers run with the setting and have erased someone
        await (await ErasureRegistry.open(client, ns, SecretStr(SECRET))).erase("alice")
        before = await everything_in(client, ns)
        for configured in (None, SecretStr("another-key-" + "x" * 30)):  # the CLI without it; another value
            with pytest.raises(ErasureKeyError) as caught:
                await ErasureRegistry.open(client, ns, configured)
            errors.append(str(caught.value))
        after = await everything_in(client, ns)
        await client.aclose()
        return errors, before, after

    (unset, other), before, after = asyncio.run(go())
    assert after == before  # no key generated and kept, nothing recorded
    assert "CADENCE_ERASURE_KEY is not set here" in unset and "set CADENCE_ERASURE_KEY here to the workers'" in unset
    assert "is not the key the 1 erasure(s)" in other and "the value the other workers use" in other
    assert SECRET not in unset + other


def test_the_key_kept_in_redis_moves_into_the_setting(runtime: Runtime) -> None:
    # the path the start warning gives: set CADENCE_ERASURE_KEY to the kept key, then delete it from Redis
    ns = namespace()

    async def go() -> tuple[Any, ...]:
        client = aioredis.Redis.from_url(runtime.redis_url or "")
        generated = await load_erasure_key(client, ns, None)
        await ErasureRegistry(client, ns, generated.digest).erase("alice")
        kept = (await client.get(f"{ns}:erased:key")).decode()
        with pytest.raises(ErasureKeyError) as caught:  # a new key instead would miss alice's erasure
            await load_erasure_key(client, ns, SecretStr("a-brand-new-key-" + "y" * 30))
        moved = await load_erasure_key(client, ns, SecretStr(kept))
        await client.delete(f"{ns}:erased:key")
        alone = await load_erasure_key(client, ns, SecretStr(kept))
        await client.aclose()
        return generated, str(caught.value), kept, moved, alone

    generated, refused, kept, moved, alone = asyncio.run(go())
    assert generated.source == "redis" and generated.warning is not None
    assert "dump" in generated.warning and "set CADENCE_ERASURE_KEY" in generated.warning
    assert f"redis-cli GET {ns}:erased:key" in generated.warning
    assert f"set CADENCE_ERASURE_KEY to the key kept in Redis (the value of {ns}:erased:key)" in refused
    assert moved.digest.key_id == alone.digest.key_id == generated.digest.key_id and moved.source == "setting"
    assert moved.warning is not None and f"redis-cli DEL {ns}:erased:key" in moved.warning
    assert alone.warning is None
    assert all(kept not in (w or "") for w in (generated.warning, moved.warning, refused))
