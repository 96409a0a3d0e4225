"""The batch engine against the real embedded Redis (no Kafka): features, dedup, decisions, rewards."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

import features
from bandits import make_policy
from cadence.metrics import Metrics
from cadence.runtime import Runtime
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import Mode
from engine.pending import pending_decisions
from engine.processor import Engine, EngineConfig, RawMessage
from features.context import CONTEXT_DIM
from features.erasure import load_erasure_key
from features.keys import UserDigest
from features.state import UserState
from features.store import RedisFeatureStore
from features.windows import WINDOWS, add_to_cell, parse_cell
from policy.catalogue import load_catalogue
from policy.pipeline import PolicyContext
from policy.state import UserPolicyState
from tests.helpers import T0, event

pytestmark = pytest.mark.integration
ANY_DIGEST = UserDigest(bytes(range(32)))  # for a store whose erasures no registry records: any key does


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def erasure_digest(rt: Runtime, namespace: str) -> UserDigest:
    """The namespace's erasure key as every process reads it without CADENCE_ERASURE_KEY: generated once and
    kept in Redis (a client of its own: the caller's belongs to the event loop of its test)."""
    async def load() -> UserDigest:
        client = aioredis.Redis.from_url(rt.redis_url or "")
        try:
            return (await load_erasure_key(client, namespace, None)).digest
        finally:
            await client.aclose()
    return asyncio.run(load())


def make_engine(rt: Runtime, metrics: Metrics | None = None, namespace: str | None = None) -> Engine:
    client = aioredis.Redis.from_url(rt.redis_url or "")
    namespace = namespace or f"test{uuid.uuid4().hex[:8]}"
    store = RedisFeatureStore(client, namespace, ttl_s=3600, dedup_ring=16,
                              user_digest=erasure_digest(rt, namespace))
    policy = make_policy("linucb", CONTEXT_DIM, seed=1)
    return Engine(store, PolicyContext(load_catalogue(DEFAULT_CATALOGUE)), policy, metrics or Metrics(), EngineConfig())


def msgs(*docs: dict | bytes, topic: str = "web-events") -> list[RawMessage]:
    return [RawMessage(topic, 0, i, d if isinstance(d, bytes) else orjson.dumps(d)) for i, d in enumerate(docs)]


async def fields(engine: Engine, user_id: str) -> dict[str, str]:
    return (await engine.store.read(user_id)).fields


def test_lua_windows_match_the_python_reference(runtime: Runtime) -> None:
    engine = make_engine(runtime)
    rng = np.random.default_rng(5)
    times = T0 + np.sort(rng.uniform(0, 3 * 86400, size=300))
    times[::17] -= 2000  # some late events
    expected: dict[str, tuple | None] = {s: None for s, _ in WINDOWS}

    async def go() -> dict[str, str]:
        for i, t in enumerate(times):
            await engine.process(msgs(event(f"e{i}", ts=float(t))))
        return await fields(engine, "u1")

    got = run(go())
    for t in times:
        for suffix, size in WINDOWS:
            expected[suffix] = add_to_cell(expected[suffix], float(t), size, 1.0)
    for suffix, _ in WINDOWS:
        assert parse_cell(got["pv" + suffix]) == pytest.approx(expected[suffix])


def test_a_replayed_duplicate_changes_no_feature(runtime: Runtime) -> None:
    metrics = Metrics()
    engine = make_engine(runtime, metrics)

    async def go():  # noqa: ANN202
        first = event("dup-1", ts=T0 + 10)
        original = (await engine.process(msgs(first, event("other", ts=T0 + 20)))).decisions[0]
        before = await fields(engine, "u1")
        out = await engine.process(msgs(first))  # the same event again, in a later batch
        out2 = await engine.process(msgs(first, first))  # and twice within one batch
        after = await fields(engine, "u1")
        return original, before, after, out.decisions + out2.decisions, out.learning + out2.learning

    original, before, after, replays, samples = run(go())
    assert before == after
    assert metrics.duplicates._value.get() == 3
    # What a crash may have lost is sent again, identical: same decision id and action, marked replayed.
    assert [(d.decision_id, d.action, d.trace) for d in replays] == [
        (original.decision_id, original.action, {"replayed": True})] * 3
    assert {s.key for s in samples} == {f"{original.decision_id}:exposure:"}  # learners apply it once


def test_one_round_trip_per_batch(runtime: Runtime) -> None:
    """300 events of 7 users: one script call per store chunk (two of 150) applies them, one more stores the
    decision state, and nothing else reaches Redis (counted by Redis itself, whatever connection is used)."""
    from engine.processor import chunk_size

    engine = make_engine(runtime)
    client = engine.store.client

    async def commands() -> Counter:
        stats = await client.info("commandstats")
        return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})

    async def go():  # noqa: ANN202
        await engine.process(msgs(event("warm-up", user_id="w", ts=T0)))  # loads both scripts into Redis
        before = await commands()
        docs = [event(f"b{i}", user_id=f"u{i % 7}", ts=T0 + i) for i in range(300)]
        out = await engine.process(msgs(*docs))
        after = await commands()
        after.subtract(before)
        after["info"] -= 1  # our own INFO call
        return out, +after

    out, calls = run(go())
    assert len(out.decisions) == 300
    assert not [d for d in out.decisions if d.mode is Mode.FALLBACK]
    assert chunk_size(300) == 150
    assert calls["evalsha"] == 2 + 1
    # Redis counts the scripts' own commands too; any other command came from a client
    scripted = {m.lower() for f in ("apply_batch.lua", "write_fields.lua")
                for m in re.findall(r"redis\.call\('(\w+)'", (Path(features.__file__).parent / f).read_text())}
    assert set(calls) - {"evalsha"} <= scripted


def test_bad_input_goes_to_dead_letters_and_good_input_still_gets_decisions(runtime: Runtime) -> None:
    engine = make_engine(runtime)
    out = run(engine.process(msgs(b"{oops", event("g1"), orjson.dumps({"x": 1}), event("g2", etype="nope"))))
    assert [d.reason_code for d in out.dead_letters] == ["malformed_json", "unexpected_field", "unknown_type"]
    assert out.dead_letters[0].raw == b"{oops"
    assert len(out.decisions) == 1 and out.decisions[0].request_event_id == "g1"


def test_decision_then_delayed_rewards_produce_learning_samples_once(runtime: Runtime) -> None:
    engine = make_engine(runtime)

    async def go():  # noqa: ANN202
        out = await engine.process(msgs(event("req", ts=T0, device="mobile", segment="vip", consent=True)))
        d = out.decisions[0]
        click = event("c1", etype="click", ts=T0 + 60, decision_id=d.decision_id, offer_id=d.action)
        conv = event("v1", etype="conversion", ts=T0 + 3600, decision_id=d.decision_id, revenue=20.0)
        click_again = {**click, "event_id": "c2", "ts": T0 + 90}
        out2 = await engine.process(msgs(click, click_again))
        out3 = await engine.process(msgs(conv))
        return d, out, out2, out3

    d, out, out2, out3 = run(go())
    assert d.mode in (Mode.EXPLOIT, Mode.EXPLORE) and 0 < d.probability <= 1
    assert [s.kind for s in out.learning] == ["exposure"]
    assert out.learning[0].eligible == d.trace["eligible"] and d.action in d.trace["eligible"]  # for OPE
    assert [(s.kind, s.reward) for s in out2.learning] == [("reward", 0.1)]  # second click: not again
    value_scale = engine.catalogue.value_scale
    assert [(s.kind, s.reward) for s in out3.learning] == [("reward", pytest.approx(20.0 / value_scale))]
    assert out3.learning[0].x == pytest.approx(out.learning[0].x, rel=1e-3)  # kept as float16


def test_no_consent_gets_the_default_action_and_no_profile(runtime: Runtime) -> None:
    engine = make_engine(runtime)

    async def go():  # noqa: ANN202
        out = await engine.process(msgs(event("nc", consent=False, device="mobile", segment="vip")))
        # the newsletter's default, email_digest, needs consent too: nothing is sent
        mail = await engine.process(msgs(event("nm", user_id="u2", consent=False, etype="email_request",
                                               placement="newsletter", ts=T0 + 12 * 3600), topic="email-events"))
        return out, await fields(engine, "u1"), mail

    out, stored, mail = run(go())
    d = out.decisions[0]
    assert (d.mode, d.action, d.trace["fallback"]) == (Mode.FALLBACK, "none", "no_marketing_consent")
    m = mail.decisions[0]
    assert (m.mode, m.action, m.trace) == (
        Mode.FALLBACK, "none", {"fallback": "no_marketing_consent", "default_withheld": "consent"})
    assert out.learning == []
    assert "dev" not in stored and "seg" not in stored and stored["cons"] == "0"


def test_features_expose_values_with_their_age(runtime: Runtime) -> None:
    engine = make_engine(runtime)

    async def go():  # noqa: ANN202
        await engine.process(msgs(event("a", ts=T0), event("b", ts=T0 + 100)))
        return await engine.store.read("u1")

    state = run(go())
    feats = state.features(T0 + 160)
    assert feats["page_views_1h"] == {"value": 2.0, "age_s": 60.0}
    assert feats["page_views_7d"]["value"] == 2.0


def test_updates_made_while_redis_is_down_are_replayed_when_it_returns(tmp_path) -> None:  # noqa: ANN001
    """A private Redis is stopped: requests get fallbacks, updates wait, and land once Redis is back."""
    from cadence.runtime import redis_process

    server = redis_process(tmp_path)
    server.start()
    metrics = Metrics()
    client = aioredis.Redis(port=server.port, socket_timeout=1, socket_connect_timeout=0.5)
    store = RedisFeatureStore(client, "outage", ttl_s=3600, dedup_ring=16, user_digest=ANY_DIGEST)
    engine = Engine(store, PolicyContext(load_catalogue(DEFAULT_CATALOGUE)), make_policy("linucb", CONTEXT_DIM),
                    metrics, EngineConfig())
    try:
        async def go():  # noqa: ANN202
            await engine.process(msgs(event("before", ts=T0)))
            server.pause()
            down = await engine.process(msgs(*[event(f"down{i}", ts=T0 + i) for i in range(1, 6)]))
            pending = metrics.updates_pending._value.get()
            server.resume()
            engine._store_retry_at = 0.0  # skip the one-second pause before the store is tried again
            up = await engine.process(msgs(event("after", ts=T0 + 10)))
            return down, pending, up, await engine.store.read("u1")

        down, pending, up, state = asyncio.run(go())
    finally:
        server.stop()
    assert [d.mode for d in down.decisions] == [Mode.FALLBACK] * 5
    assert {d.trace["fallback"] for d in down.decisions} == {"feature_store_unavailable"}
    assert pending == 5 and metrics.updates_replayed._value.get() == 5
    assert up.decisions[0].mode is not Mode.FALLBACK
    assert state.count("pv", "h", T0 + 10) == 7  # before + 5 during the outage + after, each once


def test_a_shadow_challenger_logs_its_choice_and_never_changes_the_decision(runtime: Runtime) -> None:
    client = aioredis.Redis.from_url(runtime.redis_url or "")
    ctx = PolicyContext(load_catalogue(DEFAULT_CATALOGUE))

    def engine_with(shadow):  # noqa: ANN001, ANN202
        store = RedisFeatureStore(client, f"sh{uuid.uuid4().hex[:8]}", ttl_s=3600, dedup_ring=16,
                                  user_digest=ANY_DIGEST)
        return Engine(store, ctx, make_policy("linucb", CONTEXT_DIM, seed=1), Metrics(), EngineConfig(),
                      shadow_policy=shadow)

    docs = [event(f"s{i}", user_id=f"u{i}", ts=T0 + i, segment="vip") for i in range(40)]

    async def go():  # noqa: ANN202
        with_shadow = await engine_with(make_policy("egreedy", CONTEXT_DIM, seed=5)).process(msgs(*docs))
        without = await engine_with(None).process(msgs(*docs))
        return with_shadow, without

    with_shadow, without = run(go())
    assert [d.action for d in with_shadow.decisions] == [d.action for d in without.decisions]
    assert len(with_shadow.shadow) == 40 and without.shadow == []
    rec = with_shadow.shadow[0]
    assert rec.challenger == "egreedy" and rec.decision_id == with_shadow.decisions[0].decision_id
    assert rec.live_action == with_shadow.decisions[0].action and 0 < rec.challenger_probability <= 1


def test_a_far_future_burst_is_rejected_but_a_real_jump_in_time_is_followed(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(runtime)
    engine.config = EngineConfig(watermark_resync_events=50)
    monkeypatch.setattr("engine.processor.RESYNC_MIN_USERS", 40)
    year = 365 * 86400.0

    async def go():  # noqa: ANN202
        # ten users: event time is anchored (a clock one user backs yields to a larger group at once)
        await engine.process(msgs(*[event(f"g{i}", user_id=f"g{i}", ts=T0 + i) for i in range(10)]))
        burst = await engine.process(msgs(*[event(f"f{i}", ts=T0 + year + i) for i in range(40)]))
        after_burst = engine.watermark
        good = await engine.process(msgs(event("g-after", ts=T0 + 20)))
        scattered = await engine.process(msgs(*[event(f"s{i}", user_id=f"s{i}", ts=T0 + year * (1 + i / 10))
                                                 for i in range(50)]))  # wrong clocks, each its own way
        jump = await engine.process(msgs(*[event(f"j{i}", user_id=f"j{i}", ts=T0 + year + 100 + i)
                                           for i in range(160)]))
        return burst, after_burst, good, scattered, jump

    burst, after_burst, good, scattered, jump = run(go())
    assert len(scattered.dead_letters) == 50 and engine.watermark >= T0 + year  # (checked after the jump)
    assert {d.reason_code for d in burst.dead_letters} == {"ts_out_of_range"} and len(burst.dead_letters) == 40
    assert after_burst == T0 + 9 and len(good.decisions) == 1
    # The good event ended the first run of "ahead" events. The 50 scattered ones were judged and did not
    # resync (they disagree); the jump did at its 50th event (50 agreeing, from 50 users), and the 110 after
    # it were accepted.
    assert len(jump.dead_letters) == 50 and len(jump.decisions) == 110
    assert engine.watermark >= T0 + year


def test_an_event_the_engine_fails_on_is_dead_lettered_and_its_batch_still_decided(runtime: Runtime) -> None:
    metrics = Metrics()
    engine = make_engine(runtime, metrics)
    select_row = engine.policy.select_row
    failing = {"first": True, "always": False}

    def buggy_select_row(prepared, row, actions):  # noqa: ANN001, ANN202 - a bug in the engine's own code path
        if failing["always"]:
            raise ValueError("always")
        if failing["first"]:
            failing["first"] = False  # the whole batch fails once; one by one it goes through
            raise KeyError("boom")
        return select_row(prepared, row, actions)

    engine.policy.select_row = buggy_select_row  # type: ignore[method-assign]
    batch = msgs(event("ok-1", user_id="a", ts=T0), event("ok-2", user_id="b", ts=T0 + 1))
    poison = msgs(event("poison", user_id="c", ts=T0 + 2))

    answered: list = []

    async def go():  # noqa: ANN202
        first = await engine.process_isolating(batch, answered.append)
        failing["always"] = True
        return first, await engine.process_isolating(poison, answered.append)

    first, second = run(go())
    assert len(answered) == 2 and answered[0] is first and answered[1] is second  # once each, the final outputs
    # one by one, both events were decided (the one applied before the failure comes back as a duplicate)
    assert sorted(d.request_event_id for d in first.decisions) == ["ok-1", "ok-2"]
    assert not first.dead_letters
    (dl,) = second.dead_letters
    assert (dl.reason_code, dl.raw) == ("engine_error", poison[0].value)
    assert "ValueError: always" in dl.reason and not second.decisions
    assert 'cadence_dead_letters_total{reason="engine_error"} 1.0' in metrics.exposition().decode()


def test_wrong_clocks_hours_ahead_that_fill_a_small_batch_of_a_busy_stream_are_rejected(runtime: Runtime) -> None:
    """Issue 7: the broker may hand over three messages, two of them from clocks two hours ahead (within the
    jump limit). The batch's median was a wrong clock, so both were accepted and event time moved on; alone
    in a batch, one was its own median. A busy stream (one event a second) does not step two hours at once."""
    engine = make_engine(runtime)
    ahead = T0 + 2 * 3600 + 600
    busy = [event(f"b{i}", user_id=f"b{i % 50}", ts=T0 + i) for i in range(200)]

    async def go():  # noqa: ANN202
        first = await engine.process(msgs(*busy))
        small = await engine.process(msgs(event("w1", user_id="w1", ts=ahead), event("ok", user_id="ok", ts=T0 + 201),
                                          event("w2", user_id="w2", ts=ahead)))
        alone = await engine.process(msgs(event("w3", user_id="w3", ts=ahead)))
        pair = await engine.process(msgs(event("w4", user_id="w4", ts=ahead), event("ok2", user_id="ok", ts=T0 + 202)))
        return first, small, alone, pair

    first, small, alone, pair = run(go())
    assert len(first.decisions) == 200 and not first.dead_letters
    assert [(d.offset, d.reason_code) for d in small.dead_letters] == [(0, "ts_out_of_range"), (2, "ts_out_of_range")]
    assert "ahead of the stream's event time" in small.dead_letters[0].reason
    assert [d.request_event_id for d in small.decisions] == ["ok"]
    assert len(alone.dead_letters) == 1 and not alone.decisions
    assert [d.offset for d in pair.dead_letters] == [0] and [d.request_event_id for d in pair.decisions] == ["ok2"]
    assert engine.watermark == T0 + 202


def test_a_quiet_stream_is_followed_across_lulls_of_hours(runtime: Runtime) -> None:
    """A stream that decides for a few customers, one event every quarter of an hour and two-hour lulls at
    night, each event in a batch of its own: every event is believed (its pace allows the lulls)."""
    engine = make_engine(runtime)
    gaps = np.full(120, 900.0)
    gaps[80::10] = 2 * 3600.0
    times = T0 + np.cumsum(gaps)

    async def go() -> list:
        return [await engine.process(msgs(event(f"q{i}", user_id=f"q{i % 3}", ts=float(t))))
                for i, t in enumerate(times)]

    outs = run(go())
    assert sum(len(o.decisions) for o in outs) == 120 and not any(o.dead_letters for o in outs)
    assert engine.watermark == float(times[-1])


def test_a_batch_of_several_store_chunks_decides_as_one(runtime: Runtime) -> None:
    """Chunks after the first are applied by Redis while the one before is decided, so their states are read
    before its decisions are written: the engine patches them in (a user's second decision, a chunk later,
    sees the first one pending and its stickiness)."""
    from engine.processor import STORE_CHUNK, chunk_size

    engine = make_engine(runtime)
    n = 2 * STORE_CHUNK + 40  # three chunks: 256, 256, 40
    assert chunk_size(n) == STORE_CHUNK
    later = 2 * STORE_CHUNK + 5  # the same user again, two chunks later
    docs = [event(f"c{i}", user_id="same" if i in (0, later) else f"o{i}", ts=T0 + i) for i in range(n)]

    async def go():  # noqa: ANN202
        out = await engine.process(msgs(*docs))
        return out, await fields(engine, "same")

    out, stored = run(go())
    assert len(out.decisions) == n
    kept = [p.decision_id for p in pending_decisions(UserState("same", stored)) if p.placement == "home_hero"]
    first, second = (next(d for d in out.decisions if d.request_event_id == f"c{i}") for i in (0, later))
    assert kept == [second.decision_id, first.decision_id]  # newest first: both pending, none lost
    # the second saw the first one's stickiness: the incumbent is still shown since the first decision
    sticky = UserPolicyState.decode(stored["pol"].encode()).sticky["home_hero"]
    assert second.action == first.action and (sticky.action, sticky.since) == (first.action, first.ts)


def test_a_call_sent_ahead_gives_what_apply_gives_and_survives_a_script_flush(runtime: Runtime) -> None:
    from contracts.events import parse_event
    from features.updates import update_for

    engine = make_engine(runtime)
    store = engine.store

    def updates(prefix: str) -> list:
        return [update_for(parse_event(orjson.dumps(event(f"{prefix}{i}", user_id=f"{prefix}u{i % 3}", ts=T0 + i)),
                                       "web-events", 100_000)) for i in range(6)]

    async def go():  # noqa: ANN202
        await store.client.script_flush()  # Redis forgot the script: NOSCRIPT, then loaded through apply
        ahead = await store.apply_ahead(updates("a"))
        second = await store.apply_ahead(updates("b"))  # one call is out already: this one is a plain apply
        got_ahead, got_second = await ahead, await second
        plain = await store.apply(updates("a"))  # the same events again: duplicates now
        again = await (await store.apply_ahead(updates("c")))  # the connection is fine after NOSCRIPT
        await store.close()
        return got_ahead, got_second, plain, again

    got_ahead, got_second, plain, again = run(go())
    assert [applied for applied, _ in got_ahead] == [True] * 6 and [a for a, _ in got_second] == [True] * 6
    assert [applied for applied, _ in plain] == [False] * 6
    assert [s.fields["pvh"] for _, s in got_ahead[3:]] != [s.fields["pvh"] for _, s in got_ahead[:3]]
    assert [a for a, _ in again] == [True] * 6 and again[5][1].user_id == "cu2"


def test_outputs_are_handed_over_once_decided_before_the_state_write(runtime: Runtime) -> None:
    engine = make_engine(runtime)
    steps: list[str] = []
    write_fields = engine.store.write_fields

    async def recorded_write(writes, *cas):  # noqa: ANN001, ANN202
        steps.append("write")
        return await write_fields(writes, *cas)

    engine.store.write_fields = recorded_write  # type: ignore[method-assign]

    def decided(out) -> None:  # noqa: ANN001
        steps.append(f"decided {len(out.decisions)}")

    async def go():  # noqa: ANN202
        out = await engine.process(msgs(event("w1", user_id="w", ts=T0), event("w2", user_id="v", ts=T0 + 1)), decided)
        bad = await engine.process(msgs(b"{oops"), decided)  # nothing to write: still answered
        return out, bad, await engine.store.read("w")

    out, bad, stored = run(go())
    assert steps == ["decided 2", "write", "decided 0"]
    assert len(out.decisions) == 2 and len(bad.dead_letters) == 1
    assert pending_decisions(stored)  # the write still happened after the answer


def test_a_batch_of_a_hundred_goes_in_two_chunks_and_decides_as_one(runtime: Runtime) -> None:
    """Past MIN_SPLIT events a batch is two store calls, the second applied by Redis while the first chunk is
    decided; a user in both chunks still sees their first decision in the second."""
    from engine.processor import MIN_SPLIT, chunk_size

    engine = make_engine(runtime)
    n = 100
    assert n > MIN_SPLIT and chunk_size(n) == 50
    docs = [event(f"h{i}", user_id="twice" if i in (3, 77) else f"p{i}", ts=T0 + i) for i in range(n)]
    client = engine.store.client

    async def go():  # noqa: ANN202
        await engine.process(msgs(event("warm-up", user_id="w", ts=T0)))  # loads both scripts into Redis
        before = int((await client.info("commandstats"))["cmdstat_evalsha"]["calls"])
        out = await engine.process(msgs(*docs))
        after = int((await client.info("commandstats"))["cmdstat_evalsha"]["calls"])
        return out, after - before, await fields(engine, "twice")

    out, evalsha, stored = run(go())
    assert evalsha == 2 + 1  # two chunks applied, one decision-state write
    first, second = (next(d for d in out.decisions if d.request_event_id == f"h{i}") for i in (3, 77))
    kept = [p.decision_id for p in pending_decisions(UserState("twice", stored)) if p.placement == "home_hero"]
    assert kept == [second.decision_id, first.decision_id]
    assert second.action == first.action  # the incumbent from the first chunk's decision stays


def test_erasing_a_user_deletes_their_key_and_nothing_else(runtime: Runtime) -> None:
    from features.erasure import ErasureRegistry

    client = aioredis.Redis.from_url(runtime.redis_url or "")
    ns = f"test{uuid.uuid4().hex[:8]}"

    async def go() -> tuple[int, int, list[str]]:
        await client.hset(f"{ns}:u:3", "pvh", "1:1:0")  # user "3"
        await client.hset(f"{ns}:u:alice:3", "pvh", "1:1:0")  # user "alice:3"
        await client.set(f"{ns}:snap:3", b"snapshot version 3")  # shared state whose names end like ids
        await client.hset(f"{ns}:snap:index", "3", "{}")
        registry = await ErasureRegistry.open(client, ns)
        deleted = await registry.erase("3")
        none = await registry.erase("index")
        left = sorted(k.decode() for k in await client.keys(f"{ns}:*"))
        await client.aclose()
        return deleted, none, left

    deleted, none, left = run(go())
    assert (deleted, none) == (1, 0)
    assert left == sorted([f"{ns}:u:alice:3", f"{ns}:snap:3", f"{ns}:snap:index", f"{ns}:erased:v2",
                           f"{ns}:erased:generation", f"{ns}:erased:key", f"{ns}:erased:key-id"])


def test_updates_kept_through_an_outage_do_not_bring_an_erased_user_back(runtime: Runtime) -> None:
    from features.erasure import ErasureRegistry
    from features.store import FeatureStoreError

    engine = make_engine(runtime)
    store = engine.store

    async def go() -> tuple[dict[str, str], dict[str, str], int]:
        real_apply, real_ahead = store.apply, store.apply_ahead

        async def down(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise FeatureStoreError("connection refused")

        store.apply = down  # type: ignore[method-assign]
        store.apply_ahead = down  # type: ignore[method-assign]
        await engine.process(msgs(event("g1", user_id="gone", device="mobile", segment="vip"),
                                  event("k1", user_id="kept", ts=T0 + 1, device="mobile")))
        store.apply, store.apply_ahead = real_apply, real_ahead  # Redis is back
        registry = await ErasureRegistry.open(store.client, store.namespace)
        await registry.erase("gone")  # before the buffer is replayed
        engine.erased = await registry.erased_users()  # what follow_shared_state does within a second
        engine._store_retry_at = 0.0  # the breaker's second has passed
        await engine.flush_unapplied()
        return (await store.read("gone")).fields, (await store.read("kept")).fields, len(engine._unapplied)

    gone, kept, pending = run(go())
    assert gone == {} and pending == 0
    assert kept.get("dev") == "mobile"  # the other user's update was replayed


def test_the_lift_counts_treated_decisions_that_show_nothing(runtime: Runtime) -> None:
    # Control decisions are counted whatever they show; a treated decision showing "none" (every action of the
    # placement banned here) was not, so the lift's treated mean ran over shown decisions only. It is kept like a
    # control "none": a conversion after it counts in the treated group, and no policy learns either.
    from policy.holdout import HoldoutConfig
    from policy.levers import Lever, LeverKind

    engine = make_engine(runtime)
    engine.policy_ctx.holdout = HoldoutConfig(0.0, "s")  # nobody in control: every request is treated
    for a in engine.catalogue.placement_actions("home_hero"):
        engine.policy_ctx.levers.apply(Lever(f"ban-{a}", LeverKind.BAN, "ana", "test", T0 - 60, a))

    async def go():  # noqa: ANN202
        out = await engine.process(msgs(event("n1", user_id="nothing", ts=T0)))
        stored = await fields(engine, "nothing")
        later = await engine.process(msgs(event("c1", user_id="nothing", ts=T0 + 600, etype="conversion",
                                                revenue=10.0)))
        return out, stored, later

    out, stored, later = run(go())
    d = out.decisions[0]
    assert (d.action, d.mode, d.placement) == ("none", Mode.FALLBACK, "home_hero")
    assert [(s.kind, s.action, s.mode, s.decision_id) for s in out.learning] == [
        ("exposure", "none", "fallback", d.decision_id)]
    assert [p.decision_id for p in pending_decisions(UserState("nothing", stored))] == [d.decision_id]
    assert [(s.kind, s.action, s.decision_id) for s in later.learning] == [("reward", "none", d.decision_id)]
    before = engine.policy.snapshot()
    engine.learn(out.learning + later.learning)
    lift = engine.lift.result()
    assert lift["treated_decisions"] == 1 and lift["treated_reward_per_decision"] > 0
    assert engine.policy.snapshot() == before  # counted by the lift, learned by no policy


def test_an_a_a_test_reads_no_lift_from_conversions_that_follow_nothing(runtime: Runtime) -> None:
    """Kill switch on: control and treated users both see the placement's default, "none", and half of them
    convert on their own (no decision id). The true lift is 0. Only control's "none" decisions used to be kept,
    so only control users' conversions were credited: lift -0.12, -100 %."""
    from policy.holdout import HoldoutConfig
    from policy.levers import Lever, LeverKind

    engine = make_engine(runtime)
    engine.policy_ctx.holdout = HoldoutConfig(0.5, "s")
    engine.policy_ctx.levers.apply(Lever("kill", LeverKind.KILL, "ana", "A/A test", T0 - 60))
    noon, n = T0 + 12 * 3600, 400
    views = [event(f"pv{u}", f"aa{u}", ts=noon + u) for u in range(n)]
    conversions = [event(f"cv{u}", f"aa{u}", ts=noon + 600 + u, etype="conversion", revenue=10.0)
                   for u in range(0, n, 2)]

    async def go():  # noqa: ANN202
        return await engine.process(msgs(*views)), await engine.process(msgs(*conversions))

    shown, converted = run(go())
    assert {(d.action, d.mode.value) for d in shown.decisions} == {("none", "fallback"), ("none", "holdout")}
    assert len([s for s in converted.learning if s.kind == "reward"]) == n // 2  # every conversion counted once
    engine.learn(shown.learning + converted.learning)
    lift = engine.lift.result()
    assert lift["treated_decisions"] + lift["control_decisions"] == n
    assert lift["treated_reward_per_decision"] > 0 and lift["control_reward_per_decision"] > 0
    assert lift["lift_ci95_low"] < 0 < lift["lift_ci95_high"]


def test_an_a_a_test_reads_no_lift_from_repeat_conversions(runtime: Runtime) -> None:
    """Every user, in either group, views home_hero twice and then converts twice on their own (no decision id):
    the true lift is 0. A treated user had two offers to credit, a control user one "none" (the ring keeps the
    newest "none"), whose second conversion was already_credited and dropped: lift 0.125, +100 %."""
    from policy.holdout import HoldoutConfig

    metrics = Metrics()
    engine = make_engine(runtime, metrics)
    engine.policy_ctx.holdout = HoldoutConfig(0.5, "s")
    noon, n = T0 + 12 * 3600, 400
    views = [event(f"pv{k}{u}", f"aa{u}", ts=noon + u + 60 * k) for k in range(2) for u in range(n)]
    conversions = [event(f"cv{k}{u}", f"aa{u}", ts=noon + 600 + u + 300 * k, etype="conversion", revenue=10.0)
                   for k in range(2) for u in range(n)]

    async def go():  # noqa: ANN202
        return [await engine.process(msgs(*part)) for part in (views[:n], views[n:], conversions[:n], conversions[n:])]

    outs = run(go())
    decisions = [d for o in outs[:2] for d in o.decisions]
    control_users = {d.user_id for d in decisions if d.mode is Mode.HOLDOUT}
    assert 150 < len(control_users) < 250 and {d.action for d in decisions if d.mode is not Mode.HOLDOUT} != {"none"}
    learning = [s for o in outs for s in o.learning]
    rewards = [s for s in learning if s.kind == "reward"]
    assert len(rewards) == 2 * n  # every conversion counted once, in its user's group
    assert sum(s.mode == "holdout" for s in rewards) == 2 * len(control_users)
    # the second conversions control users had no decision left to credit with: in the lift alone (action "none")
    assert metrics.lift_only_rewards.collect()[0].samples[0].value == len(control_users)
    engine.learn(learning)
    lift = engine.lift.result()
    assert lift["treated_decisions"] + lift["control_decisions"] == 2 * n
    assert lift["treated_reward_per_decision"] == pytest.approx(lift["control_reward_per_decision"], rel=1e-12)
    assert lift["lift"] == pytest.approx(0.0, abs=1e-12) and lift["relative_lift"] == pytest.approx(0.0, abs=1e-9)


def test_a_conversion_with_the_id_of_a_decision_pushed_out_of_the_ring_is_still_learned(runtime: Runtime) -> None:
    """Offer shown, clicked, three more views of the placement (the same sticky offer), then the conversion with
    the first decision's id, 10 minutes later: the ring keeps the last 3 decisions that showed an action, so the
    first was gone and the conversion counted as no_decision, learned by nothing (engaged users' revenue lost)."""
    metrics = Metrics()
    engine = make_engine(runtime, metrics)
    noon = T0 + 12 * 3600

    async def go():  # noqa: ANN202
        first = (await engine.process(msgs(event("pv0", "u1", ts=noon)))).decisions[0]
        await engine.process(msgs(event("ck", "u1", ts=noon + 30, etype="click", decision_id=first.decision_id,
                                        offer_id=first.action, placement="home_hero")))
        later = [(await engine.process(msgs(event(f"pv{k}", "u1", ts=noon + 60 * k)))).decisions[0]
                 for k in range(1, 4)]
        converted = await engine.process(msgs(event("cv", "u1", ts=noon + 600, etype="conversion",
                                                    decision_id=first.decision_id, offer_id=first.action,
                                                    revenue=18.0)))
        return first, later, converted

    first, later, converted = run(go())
    assert first.action != "none" and {d.action for d in later} == {first.action}  # sticky
    (sample,) = converted.learning
    assert (sample.kind, sample.reward_type, sample.action) == ("reward", "conversion", first.action)
    assert sample.decision_id == later[-1].decision_id and sample.reward == 18.0 / engine.catalogue.value_scale
    outcomes = {s.labels["outcome"]: s.value for s in metrics.rewards.collect()[0].samples if s.name.endswith("_total")}
    assert outcomes.get("credited") == 2 and not outcomes.get("no_decision")


def test_levers_that_can_never_apply_again_are_dropped_from_the_worker_book(runtime: Runtime) -> None:
    # Every request checks every lever; expired ones used to stay in the book for good.
    from policy.levers import Lever, LeverKind

    engine = make_engine(runtime)
    day = 86400.0
    book = engine.policy_ctx.levers
    book.apply(Lever("old-ban", LeverKind.BAN, "ana", "spring sale over", T0, "offer_10pct", expires=T0 + day))
    book.apply(Lever("recent-ban", LeverKind.BAN, "ana", "stock out", T0, "offer_10pct", expires=T0 + 20 * day))
    book.apply(Lever("pin", LeverKind.PIN, "ana", "launch", T0, "offer_10pct"))
    assert engine.prune_levers() == 3  # no event time yet: nothing is known to be over

    async def go():  # noqa: ANN202
        for k in range(3):  # event time reaches T0 + 40 days (three users, so the clock believes it)
            await engine.process(msgs(event(f"p{k}", user_id=f"u{k}", ts=T0 + 40 * day)))
        left = engine.prune_levers()
        return left, await engine.process(msgs(event("late", user_id="u9", ts=T0 + 10 * day)))

    left, late = run(go())
    # "recent-ban" ended 20 days ago: an event that late is still accepted (30 days), so it stays
    assert left == 2 and sorted(lv.lever_id for lv in book.levers) == ["pin", "recent-ban"]
    d = late.decisions[0]  # the ban still holds for it (and beats the pin of the same action)
    assert "recent-ban" in d.trace["levers"] and d.action != "offer_10pct" and "offer_10pct" in d.trace["removed"]


def test_a_batch_read_again_resends_what_redis_kept_and_counts_what_it_could_not(runtime: Runtime) -> None:
    # A crash between the state write and the broker's acknowledgement: the same batch comes back.
    from engine.pending import KEEP
    from policy.levers import Lever, LeverKind

    metrics = Metrics()
    engine = make_engine(runtime, metrics)
    book = engine.policy_ctx.levers
    views = msgs(*(event(f"pv{i}", ts=T0 + 10 * i) for i in range(KEEP + 1)))  # one user, one placement

    async def go():  # noqa: ANN202
        first = await engine.process(views)
        again = await engine.process(views)
        book.apply(Lever("k1", LeverKind.KILL, "ops", "incident", ts=T0))
        killed = msgs(event("pv-killed", ts=T0 + 100))
        shown_none = await engine.process(killed)  # the kill switch: "none", no pending decision stored
        book.revoke("k1", "ops", "incident over", T0 + 101)
        return first, again, shown_none, await engine.process(killed)

    first, again, shown_none, redecided = run(go())
    outcome = {s.labels["outcome"]: s.value for s in metrics.replayed_requests.collect()[0].samples
               if s.name.endswith("_total")}
    # the three newest are sent again as decided; the oldest is superseded by them: nothing, but counted
    assert [(d.decision_id, d.action) for d in again.decisions] == [(d.decision_id, d.action)
                                                                    for d in first.decisions[1:]]
    assert all(d.trace == {"replayed": True} for d in again.decisions)
    # the killed request stored nothing: decided again from the state of now, under its id, and marked so
    assert shown_none.decisions[0].action == "none"
    d = redecided.decisions[0]
    assert d.decision_id == shown_none.decisions[0].decision_id and d.trace["replayed"] == "redecided"
    assert outcome == {"reemitted": KEEP, "superseded": 1, "redecided": 1}


def test_a_stored_refusal_holds_when_redis_is_away_and_after_erasure(tmp_path) -> None:  # noqa: ANN001
    """The fallbacks that cannot read the user's stored consent (Redis away, the profile erased) do not show a
    default that needs consent unless the request itself says consent=true: the newsletter default
    (email_digest) needs it, and this user refused it on an earlier event."""
    from cadence.runtime import redis_process

    server = redis_process(tmp_path)
    server.start()
    client = aioredis.Redis(port=server.port, socket_timeout=1, socket_connect_timeout=0.5)
    store = RedisFeatureStore(client, "consent", ttl_s=3600, dedup_ring=16, user_digest=ANY_DIGEST)
    engine = Engine(store, PolicyContext(load_catalogue(DEFAULT_CATALOGUE)), make_policy("linucb", CONTEXT_DIM),
                    Metrics(), EngineConfig())

    def request(i: int, **extra: object) -> dict:
        # at noon: quiet hours (22:00-06:00 UTC) hold these fallbacks back too
        return event(f"e{i}", "nc", ts=T0 + 12 * 3600 + i, etype="email_request", placement="newsletter", **extra)

    try:
        async def go():  # noqa: ANN202
            stored = await engine.process(msgs(request(1, consent=False), topic="email-events"))
            server.pause()
            down = await engine.process(msgs(request(2), request(3, consent=True), topic="email-events"))
            server.resume()
            assert engine.erased is not None
            engine.erased = engine.erased.with_users(["nc"])
            erased = await engine.process(msgs(request(4), request(5, consent=True), topic="email-events"))
            return stored, down, erased

        stored, down, erased = asyncio.run(go())
    finally:
        server.stop()
    assert [(d.action, d.trace["default_withheld"]) for d in stored.decisions] == [("none", "consent")]
    for out, reason in ((down, "feature_store_unavailable"), (erased, "erased_user")):
        unknown, given = out.decisions
        assert (unknown.action, unknown.trace["fallback"], unknown.trace["default_withheld"]) == ("none", reason,
                                                                                                 "consent")
        assert (given.action, given.trace["fallback"]) == ("email_digest", reason)


def test_a_request_for_another_channels_placement_is_dead_lettered(runtime: Runtime) -> None:
    """A page_view asking for the newsletter (an email placement) used to be decided: email templates shown
    on the web, learned as exposures, and the user's email cap spent, so their real email_request was
    suppressed. It is refused, naming the placements of its own channel."""
    engine = make_engine(runtime)
    wrong = [event(f"pv{i}", "u-ch", ts=T0 + 43200 + i, placement="newsletter") for i in range(3)]
    out = run(engine.process(msgs(*wrong)))
    ad = run(engine.process(msgs(event("ad1", "u-ch", ts=T0 + 43205, etype="ad_request", placement="home_hero"),
                                 topic="ad-events")))
    email = run(engine.process(msgs(event("em1", "u-ch", ts=T0 + 43210, etype="email_request", placement="newsletter"),
                                    topic="email-events")))
    assert out.decisions == [] and ad.decisions == []
    assert {dl.reason_code for dl in out.dead_letters + ad.dead_letters} == {"invalid_value"}
    assert "is on the email channel, but a page_view (web-events) asks for a web placement: home_hero, " \
           "product_sidebar" in out.dead_letters[0].reason
    assert "display_slot" in ad.dead_letters[0].reason
    assert [d.trace.get("caps") for d in email.decisions] == [None]  # the email cap was not spent


def test_a_request_for_a_placement_the_catalogue_does_not_know_is_dead_lettered(runtime: Runtime) -> None:
    """A typo in the website's integration (placement "home_heroo") used to be decided "none" (fallback
    unknown_placement), indistinguishable from a real "show nothing", while GET /decide refused it with a 400.
    It is refused the same way on the stream: a dead letter naming the placements of its channel, counted."""
    engine = make_engine(runtime)
    out = run(engine.process(msgs(event("typo1", "u-typo", ts=T0 + 43200, placement="home_heroo"))))
    assert out.decisions == []
    [dead] = out.dead_letters
    assert dead.reason_code == "invalid_value"
    assert "unknown placement 'home_heroo'" in dead.reason and "home_hero, product_sidebar" in dead.reason
    assert 'cadence_dead_letters_total{reason="invalid_value"} 1.0' in engine.metrics.exposition().decode()


def test_without_consent_nothing_describing_the_person_is_kept(runtime: Runtime) -> None:
    """README: the profile fields describing the person are not stored for a user whose stored consent is false.
    A stored refusal used to let a later event without the field store device and segment, and a withdrawal
    kept the device, segment and pending decisions (context vectors) stored before it."""
    engine = make_engine(runtime)
    noon = T0 + 12 * 3600

    async def go() -> list[dict[str, str]]:
        seen = []
        for doc in (event("a", "u-w", ts=noon, device="mobile", segment="vip", consent=True),
                    event("b", "u-w", ts=noon + 1, consent=False),
                    event("c", "u-w", ts=noon + 2, device="desktop", segment="loyal"),
                    event("d", "u-w", ts=noon + 3, device="tablet", consent=True)):
            await engine.process(msgs(doc))
            seen.append(await fields(engine, "u-w"))
        return seen

    before, withdrawn, later, again = run(go())
    assert {"dev", "seg", "pd:home_hero"} <= set(before)
    for stored in (withdrawn, later):
        assert stored["cons"] == "0" and not {"dev", "seg"} & set(stored)
        assert not [f for f in stored if f.startswith("pd:")]
    assert parse_cell(later["pvh"])[1] == 3  # traffic is still counted
    assert again["dev"] == "tablet"  # consent given again: stored again


def test_the_latest_consent_by_event_time_wins_whatever_the_arrival_order(runtime: Runtime) -> None:
    """A refusal at noon+600 arrived first; an opt-in from noon+300 (with device and segment) arrived late and
    used to set "cons" back to "1" and store the device and segment the refusal had deleted, so a request at
    noon+900 without the consent field was marketed to. The reverse: a late refusal wiped out a newer opt-in.
    The consent value of the latest event time wins (cons_t), in separate batches and within one."""
    engine = make_engine(runtime)
    noon = T0 + 12 * 3600

    async def go() -> tuple[list, list[dict[str, str]]]:
        outs, seen = [], []
        # u-a: refusal first, the older opt-in late (two batches)
        await engine.process(msgs(event("a1", "u-a", ts=noon + 600, consent=False)))
        await engine.process(msgs(event("a2", "u-a", ts=noon + 300, consent=True, device="mobile", segment="vip")))
        seen.append(await fields(engine, "u-a"))
        outs.append((await engine.process(msgs(event("a3", "u-a", ts=noon + 900)))).decisions[0])
        # u-b: opt-in first, the older refusal late (two batches)
        await engine.process(msgs(event("b1", "u-b", ts=noon + 600, consent=True, device="mobile", segment="vip")))
        await engine.process(msgs(event("b2", "u-b", ts=noon + 300, consent=False)))
        seen.append(await fields(engine, "u-b"))
        outs.append((await engine.process(msgs(event("b3", "u-b", ts=noon + 900)))).decisions[0])
        # u-c and u-d: the same within one batch (one Lua call)
        await engine.process(msgs(event("c1", "u-c", ts=noon + 600, consent=False),
                                  event("c2", "u-c", ts=noon + 300, consent=True, device="mobile", segment="vip"),
                                  event("d1", "u-d", ts=noon + 600, consent=True, device="mobile", segment="vip"),
                                  event("d2", "u-d", ts=noon + 300, consent=False)))
        seen += [await fields(engine, "u-c"), await fields(engine, "u-d")]
        outs.append((await engine.process(msgs(event("c3", "u-c", ts=noon + 900)))).decisions[0])
        outs.append((await engine.process(msgs(event("d3", "u-d", ts=noon + 900)))).decisions[0])
        # u-a opts in again, after the refusal: normal behaviour again
        await engine.process(msgs(event("a4", "u-a", ts=noon + 1000, consent=True, device="tablet")))
        await engine.process(msgs(event("a5", "u-a", ts=noon + 950, segment="vip")))  # late, after the refusal
        seen.append(await fields(engine, "u-a"))
        return outs, seen

    outs, (a, b, c, d, again) = run(go())
    for refused in (a, c):
        assert (refused["cons"], float(refused["cons_t"])) == ("0", noon + 600)
        assert not {"dev", "seg"} & set(refused) and not [f for f in refused if f.startswith("pd:")]
    for given in (b, d):
        assert (given["cons"], float(given["cons_t"]), given["dev"], given["seg"]) == ("1", noon + 600, "mobile", "vip")
    for dec in (outs[0], outs[2]):
        assert (dec.mode, dec.trace.get("fallback")) == (Mode.FALLBACK, "no_marketing_consent")
    for dec in (outs[1], outs[3]):
        assert dec.trace.get("fallback") is None and dec.mode != Mode.FALLBACK
    assert (again["cons"], float(again["cons_t"]), again["dev"], again["seg"]) == ("1", noon + 1000, "tablet", "vip")


def test_a_refusal_and_an_opt_in_at_the_same_event_time_leave_a_refusal(runtime: Runtime) -> None:
    """Ties on event time: the refusal wins, whichever arrives first."""
    engine = make_engine(runtime)
    noon = T0 + 12 * 3600

    async def go() -> list[dict[str, str]]:
        await engine.process(msgs(event("a1", "u-a", ts=noon, consent=False),
                                  event("a2", "u-a", ts=noon, consent=True, device="mobile")))
        await engine.process(msgs(event("b1", "u-b", ts=noon, consent=True, device="mobile")))
        await engine.process(msgs(event("b2", "u-b", ts=noon, consent=False)))
        await engine.process(msgs(event("c1", "u-c", ts=noon + 0.123456, consent=False)))  # 16 digits: kept exact
        await engine.process(msgs(event("c2", "u-c", ts=noon + 0.123456, consent=True, device="mobile")))
        return [await fields(engine, "u-a"), await fields(engine, "u-b"), await fields(engine, "u-c")]

    a, b, c = run(go())
    for stored in (a, b):
        assert (stored["cons"], float(stored["cons_t"])) == ("0", noon) and "dev" not in stored
    assert (c["cons"], c["cons_t"]) == ("0", repr(noon + 0.123456)) and "dev" not in c


def test_a_hash_stored_before_consent_times_keeps_its_refusal_against_older_opt_ins(runtime: Runtime) -> None:
    """Hashes written before cons_t have none: a stored refusal counts as of the hash's latest event time (an
    older late opt-in cannot undo it, a newer one can); a stored opt-in as of -inf (any refusal applies)."""
    engine = make_engine(runtime)
    noon = T0 + 12 * 3600

    async def go() -> list[dict[str, str]]:
        await engine.process(msgs(event("a1", "u-a", ts=noon + 600, consent=False),
                                  event("b1", "u-b", ts=noon + 600, consent=True, device="mobile")))
        for user in ("u-a", "u-b"):  # as an older release stored them
            await engine.store.client.hdel(engine.store.key(user), "cons_t")
        await engine.process(msgs(event("a2", "u-a", ts=noon + 300, consent=True, device="mobile"),
                                  event("b2", "u-b", ts=noon + 300, consent=False)))
        seen = [await fields(engine, "u-a"), await fields(engine, "u-b")]
        await engine.process(msgs(event("a3", "u-a", ts=noon + 700, consent=True, device="tablet")))
        return [*seen, await fields(engine, "u-a")]

    a, b, again = run(go())
    assert a["cons"] == "0" and "cons_t" not in a and "dev" not in a
    assert (b["cons"], float(b["cons_t"])) == ("0", noon + 300) and "dev" not in b
    assert (again["cons"], float(again["cons_t"]), again["dev"]) == ("1", noon + 700, "tablet")


def test_the_lift_counts_only_the_placements_the_holdout_covers(runtime: Runtime) -> None:
    """Holdout narrowed to the newsletter: a control user's page views get treated decisions, so they are in
    neither group. Their exposures and rewards used to reach the lift as treated (only lift-only samples
    were left out): the treated group held every placement, the control group only the newsletter."""
    from policy.holdout import HoldoutConfig

    engine = make_engine(runtime)
    engine.policy_ctx = PolicyContext(load_catalogue(DEFAULT_CATALOGUE),
                                      holdout=HoldoutConfig(0.5, "s", placements=("newsletter",)))
    noon = T0 + 12 * 3600
    docs = [event(f"pv{u}", f"lu{u}", ts=noon + u) for u in range(40)]
    emails = [event(f"em{u}", f"lu{u}", ts=noon + 100 + u, etype="email_request", placement="newsletter")
              for u in range(40)]

    async def go() -> tuple[list, list]:
        web = await engine.process(msgs(*docs))
        email = await engine.process(msgs(*emails, topic="email-events"))
        return web.decisions + email.decisions, web.learning + email.learning

    decisions, learning = run(go())
    engine.learn(learning)
    lift = engine.lift.result()
    newsletter = [d for d in decisions if d.placement == "newsletter"]
    assert len([d for d in decisions if d.placement == "home_hero" and d.action != "none"]) == 40
    assert lift["treated_decisions"] + lift["control_decisions"] == len(newsletter) == 40
    assert lift["control_decisions"] == len([d for d in newsletter if d.mode.value == "holdout"]) > 0


def test_a_decision_made_before_a_refusal_does_not_store_its_pending_decision_after_it(runtime: Runtime) -> None:
    """Consent given, then refused, in one batch: apply_batch.lua deletes what describes the person at the
    refusal, but the batch's decision-state write comes after it; write_fields.lua used to store the first
    request's pending decision (its context vector) again for a user whose consent is now "0"."""
    engine = make_engine(runtime)
    noon = T0 + 12 * 3600

    async def go() -> dict[str, str]:
        await engine.process(msgs(event("a", "u-r", ts=noon, device="mobile", consent=True),
                                  event("b", "u-r", ts=noon + 1, consent=False)))
        return await fields(engine, "u-r")

    stored = run(go())
    assert stored["cons"] == "0" and not [f for f in stored if f.startswith("pd:") or f in ("dev", "seg")]
    assert "pol" in stored  # the contact history and caps stay


CAPPED = """\
[[placement]]
id = "home_hero"
channel = "web"
default_action = "none"

[[action]]
id = "offer_capped"
channel = "web"
placements = ["home_hero"]
value = 10.0
cost = 0.5
max_per_day = 2
"""


def capped_workers(runtime: Runtime, tmp_path: Path) -> tuple[aioredis.Redis, str, Callable[[], Engine]]:
    """A client, a fresh namespace and a maker of engines ("workers") on it, with the CAPPED catalogue."""
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(CAPPED)
    client = aioredis.Redis.from_url(runtime.redis_url or "")
    ns = f"test{uuid.uuid4().hex[:8]}"
    digest = erasure_digest(runtime, ns)

    def worker() -> Engine:
        store = RedisFeatureStore(client, ns, ttl_s=3600, dedup_ring=16, user_digest=digest)
        return Engine(store, PolicyContext(load_catalogue(catalogue)), make_policy("linucb", CONTEXT_DIM, seed=1),
                      Metrics(), EngineConfig())

    return client, ns, worker


def test_a_restarted_worker_does_not_spend_the_days_cap_again(runtime: Runtime, tmp_path: Path) -> None:
    # The counters lived in the worker only: after a restart (deploy, crash) it showed a capped action
    # again as if the day had just begun, spending its share of the day's budget once more per restart.
    from policy.budget_store import BudgetStore

    client, ns, worker = capped_workers(runtime, tmp_path)

    async def go():  # noqa: ANN202
        first, budgets = worker(), BudgetStore(client, ns)
        await budgets.seed(first.policy_ctx.budgets)  # an empty namespace: nothing spent yet
        shown = [(await first.process(msgs(event(f"e{k}", user_id=f"u{k}", ts=T0 + 100 + k)))).decisions[0]
                 for k in range(3)]
        await budgets.flush(first.policy_ctx.budgets)  # the one-second shared-state timer
        restarted = worker()
        await BudgetStore(client, ns).seed(restarted.policy_ctx.budgets)  # at start, before deciding
        after = (await restarted.process(msgs(event("e9", user_id="u9", ts=T0 + 3600)))).decisions[0]
        next_day = (await restarted.process(msgs(event("e10", user_id="u10", ts=T0 + 86400 + 5)))).decisions[0]
        return shown, after, next_day, await client.hgetall(f"{ns}:budget:d:{int(T0 // 86400)}")

    shown, after, next_day, stored = run(go())
    assert [d.action for d in shown] == ["offer_capped", "offer_capped", "none"]
    assert stored == {b"offer_capped:n": b"2", b"offer_capped:spend": b"1"}
    assert after.action == "none" and after.trace["removed"] == {"offer_capped": "volume_cap"}
    assert next_day.action == "offer_capped"  # a new UTC day (event time): a new budget


def test_two_workers_hold_a_daily_cap_for_the_fleet_not_each(runtime: Runtime, tmp_path: Path) -> None:
    # Every worker held the whole limit against its own decisions (its share was never set to 1/workers):
    # two workers showed an action capped at 2 a day 4 times. Every second each one now adds its counts to
    # the fleet's totals and takes them back (BudgetStore.exchange, the shared-state timer).
    from policy.budget_store import BudgetStore

    client, ns, worker = capped_workers(runtime, tmp_path)

    async def go():  # noqa: ANN202
        a, b, budgets = worker(), worker(), BudgetStore(client, ns)
        shown = []
        for second in (0, 3):  # a request on each worker; then two seconds of both workers' timers
            for name, w in (("a", a), ("b", b)):
                out = await w.process(msgs(event(f"{name}{second}", user_id=f"{name}-u{second}", ts=T0 + 100 + second)))
                shown.append(out.decisions[0].action)
            for _ in range(2):  # a worker's timer may fire before the other's hand-over: the next one has it
                await budgets.exchange(a.policy_ctx.budgets)
                await budgets.exchange(b.policy_ctx.budgets)
        return shown, await client.hget(f"{ns}:budget:d:{int(T0 // 86400)}", "offer_capped:n")

    shown, stored = run(go())
    # within about a second of each other both workers may still show it; after that the fleet's cap holds
    assert shown == ["offer_capped", "offer_capped", "none", "none"]
    assert stored == b"2"


class _FaultyRedis:
    """Fails the Redis client's connections while ``mode`` is set: "lost reply" lets Redis receive and apply
    each command, then loses its reply (the client times out, as with socket_timeout=2 and a slow Redis);
    "refused" fails before anything is sent. Patched on the connections, under the client's own retries."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import AbstractConnection
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self.mode: str | None = None
        read, send = AbstractConnection.read_response, AbstractConnection.send_packed_command
        faults = self

        async def read_response(conn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            reply = await read(conn, *args, **kwargs)
            if faults.mode == "lost reply":
                raise RedisTimeoutError("Timeout reading from socket")
            return reply

        async def send_packed_command(conn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if faults.mode == "refused":
                raise RedisConnectionError("Connection refused")
            return await send(conn, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "read_response", read_response)
        monkeypatch.setattr(AbstractConnection, "send_packed_command", send_packed_command)


@pytest.mark.parametrize("fault", ["lost reply", "refused"])
def test_a_budget_flush_whose_reply_is_lost_or_refused_is_counted_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    # A flush Redis applied but whose reply was lost (a timeout) was given back and added again the next
    # second (and redis-py's own retries re-sent the MULTI): the fleet's totals grew by a whole flush per
    # slow reply, so caps and budgets were reached early. A flush is now applied at most once (its sequence
    # number is kept in Redis with the counts); one that did not reach Redis is applied by the next flush.
    from policy.budget_store import BudgetStore
    from policy.budgets import WorkerBudgets

    faults = _FaultyRedis(monkeypatch)
    ns = f"test{uuid.uuid4().hex[:8]}"
    day_key = f"{ns}:budget:d:{int(T0 // 86400)}"

    async def go():  # noqa: ANN202
        client = aioredis.Redis.from_url(runtime.redis_url or "")
        store, budgets = BudgetStore(client, ns), WorkerBudgets()
        try:
            budgets.record_action("warm_up", T0, 0.0)
            await store.exchange(budgets)  # the connection is open (and any script loaded) before the fault
            budgets.record_action("offer_capped", T0 + 1, 0.5)
            budgets.take_change("home_hero", T0 + 1)
            faults.mode = fault
            with pytest.raises(RedisError):
                await store.flush(budgets)
            faults.mode = None
            after_failure = await client.hget(day_key, "offer_capped:n")
            budgets.record_action("offer_capped", T0 + 2, 0.25)  # counted between the failure and the retry
            for _ in range(2):  # the next seconds
                await store.exchange(budgets)
            seen = budgets.action_usage("offer_capped", T0)
            stored = await client.hgetall(day_key), await client.hgetall(f"{ns}:budget:h:{int(T0 // 3600)}")
            marker = await client.get(f"{ns}:budget:flushed:{store.process_id}"), await client.ttl(store.marker_key)
            return after_failure, seen, stored, marker
        finally:
            await client.aclose()

    after_failure, seen, (day, hour), (last_seq, marker_ttl) = run(go())
    assert after_failure == (b"1" if fault == "lost reply" else None)  # applied (reply lost) / not applied
    assert day == {b"warm_up:n": b"1", b"offer_capped:n": b"2", b"offer_capped:spend": b"0.75"}
    assert hour == {b"home_hero": b"1"}
    assert seen == (2, 0.75)  # the worker's counters, raised to the fleet's totals: not inflated either
    assert last_seq == b"3" and 0 < marker_ttl <= 4 * 86400  # warm-up, the failed flush, the one after it


def test_a_service_email_without_consent_is_capped_and_its_contacts_are_stored(runtime: Runtime) -> None:
    """A default that needs no consent (a service email) shown to a user who refused marketing consent used to
    skip the contact rules and record nothing: every request got it. Its contacts are stored in the policy
    state (write_fields.lua keeps "pol" for such users) and count against the cap of 3 emails in 7 days."""
    engine = make_engine(runtime)
    digest = engine.policy_ctx.catalogue.actions["email_digest"]
    engine.policy_ctx.catalogue.actions["email_digest"] = dataclasses.replace(digest, consent_needed=False)
    noon = T0 + 12 * 3600

    async def go() -> tuple[list, dict[str, str]]:
        seen = []
        for i, ts in enumerate([noon, noon + 11 * 3600, noon + 86400, noon + 2 * 86400, noon + 3 * 86400]):
            out = await engine.process(msgs(event(f"s{i}", "u-s", ts=ts, etype="email_request", placement="newsletter",
                                                  consent=False), topic="email-events"))
            assert out.learning == []  # nothing learned, in neither lift group
            seen += [(d.action, d.mode, d.trace.get("caps")) for d in out.decisions]
        return seen, await fields(engine, "u-s")

    seen, stored = run(go())
    assert seen == [("email_digest", Mode.FALLBACK, None), ("none", Mode.SUPPRESSED, ["quiet_hours"]),
                    ("email_digest", Mode.FALLBACK, None), ("email_digest", Mode.FALLBACK, None),
                    ("none", Mode.SUPPRESSED, ["channel_cap"])]
    history = UserPolicyState.decode(stored["pol"].encode()).contacts["email"]
    assert history.contacts == [noon, noon + 86400, noon + 2 * 86400]
    assert stored["cons"] == "0" and not [f for f in stored if f.startswith("pd:")]


def test_a_redelivered_service_email_without_consent_is_sent_again_not_counted_again(runtime: Runtime) -> None:
    """A no-consent decision keeps no pending record, so a redelivered request (after a crash or a rebalance)
    used to be decided again: its contact recorded and its budget charged once per redelivery, and three
    redeliveries filled the cap of 3 emails a week. The decision goes out again, recording nothing."""
    engine = make_engine(runtime)
    digest = engine.policy_ctx.catalogue.actions["email_digest"]
    engine.policy_ctx.catalogue.actions["email_digest"] = dataclasses.replace(digest, consent_needed=False)
    noon = T0 + 12 * 3600
    request = event("s0", "u-s", ts=noon, etype="email_request", placement="newsletter", consent=False)

    async def go() -> tuple[list, dict[str, str]]:
        outs = [await engine.process(msgs(request, topic="email-events")) for _ in range(4)]  # 3 redeliveries
        return [d for out in outs for d in out.decisions], await fields(engine, "u-s")

    decisions, stored = run(go())
    assert len({d.decision_id for d in decisions}) == 1
    assert [(d.action, d.trace.get("replayed")) for d in decisions] == [("email_digest", None)] + [
        ("email_digest", True)] * 3
    assert UserPolicyState.decode(stored["pol"].encode()).contacts["email"].contacts == [noon]
    assert engine.policy_ctx.budgets.action_usage("email_digest", noon)[0] == 1
