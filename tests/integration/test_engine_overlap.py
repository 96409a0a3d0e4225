"""Batches that overlap on the real embedded Redis: a batch decided while an earlier batch's decision-state
write is still in flight sees that batch's decisions (engine/inflight.py), and the writes land in order."""

from __future__ import annotations

import asyncio

import pytest

from engine.pending import pending_decisions
from features.state import UserState
from policy.state import UserPolicyState
from tests.helpers import T0, event
from tests.integration.test_engine_on_redis import fields, make_engine, msgs

pytestmark = pytest.mark.integration


def test_a_batch_decided_while_the_last_write_is_in_flight_keeps_both_decisions(runtime) -> None:  # noqa: ANN001
    engine = make_engine(runtime)
    write_fields = engine.store.write_fields
    release = asyncio.Event()
    order: list[str] = []

    async def slow_first_write(writes, *cas):  # noqa: ANN001, ANN202
        n = sum(step.startswith("sent") for step in order) + 1
        order.append(f"sent {n}")
        if n == 1:
            await release.wait()  # the first batch's write stays in flight while the second is decided
        result = await write_fields(writes, *cas)
        order.append(f"stored {n}")
        return result

    engine.store.write_fields = slow_first_write  # type: ignore[method-assign]

    async def go():  # noqa: ANN202
        first_decided = asyncio.Event()
        first = asyncio.ensure_future(engine.process(msgs(event("o1", user_id="same", ts=T0)),
                                                     lambda out: first_decided.set()))
        await first_decided.wait()
        await asyncio.sleep(0.05)  # the first write is surely out (held) before the second batch reads
        assert not first.done()
        second = asyncio.ensure_future(engine.process(msgs(event("o2", user_id="same", ts=T0 + 5))))
        await asyncio.sleep(0.05)
        assert not second.done()  # decided, its write waits for the first one's
        release.set()
        out1, out2 = await first, await second
        return out1, out2, await fields(engine, "same")

    out1, out2, stored = asyncio.run(go())
    # one write out at a time, in the order the batches were decided
    assert order == ["sent 1", "stored 1", "sent 2", "stored 2"]
    d1, d2 = out1.decisions[0], out2.decisions[0]
    kept = [p.decision_id for p in pending_decisions(UserState("same", stored)) if p.placement == "home_hero"]
    assert kept == [d2.decision_id, d1.decision_id]  # both pending: the second did not overwrite the first
    sticky = UserPolicyState.decode(stored["pol"].encode()).sticky["home_hero"]
    assert d2.action == d1.action and (sticky.action, sticky.since) == (d1.action, d1.ts)
    assert len(engine._in_flight) == 0  # nothing kept once both are stored


def failing_writes(engine, fail: set[int]):  # noqa: ANN001, ANN201
    """The store's write_fields, failing on the calls numbered in ``fail`` (1-based); returns the calls made."""
    from features.store import FeatureStoreError

    write_fields = engine.store.write_fields
    calls: list[dict] = []

    async def flaky(writes, *cas):  # noqa: ANN001, ANN202
        calls.append({u: dict(f) for u, f in writes.items()})
        if len(calls) in fail:
            raise FeatureStoreError("feature store write failed: test")
        return await write_fields(writes, *cas)

    engine.store.write_fields = flaky  # type: ignore[method-assign]
    return calls


def test_a_failed_write_is_kept_patched_into_later_batches_and_stored_with_the_next_one(runtime) -> None:  # noqa: ANN001
    # A failed decision-state write used to be dropped: the decision had gone out, but its pending record and the
    # user's policy state were lost, so a click on it earned nothing and the next change was not limited.
    engine = make_engine(runtime)
    calls = failing_writes(engine, fail={1})

    async def go():  # noqa: ANN202
        out1 = await engine.process(msgs(event("f1", user_id="kept", ts=T0)))
        unstored = engine.metrics.decision_state_unstored._value.get()
        # within a second of the failure: this batch's write joins the kept one, neither is tried yet
        out2 = await engine.process(msgs(event("f2", user_id="kept", ts=T0 + 5)))
        tried = len(calls)
        click = await engine.process(msgs(event("c1", user_id="kept", ts=T0 + 30, etype="click",
                                                decision_id=out1.decisions[0].decision_id,
                                                offer_id=out1.decisions[0].action)))
        engine._write_retry_at = 0.0  # a second later
        out3 = await engine.process(msgs(event("f3", user_id="other", ts=T0 + 40)))
        return out1, out2, unstored, tried, click, out3, await fields(engine, "kept")

    out1, out2, unstored, tried, click, out3, stored = asyncio.run(go())
    d1, d2 = out1.decisions[0], out2.decisions[0]
    assert unstored == 1 and engine.metrics.store_errors.labels("write")._value.get() == 1
    assert tried == 1 and len(calls) == 2 and set(calls[1]) == {"kept", "other"}  # one write carried all four
    assert [s.kind for s in click.learning] == ["reward"]  # a click on the kept decision is credited
    kept = [p.decision_id for p in pending_decisions(UserState("kept", stored)) if p.placement == "home_hero"]
    assert kept[0] == d2.decision_id  # the second batch read the first's decision, patched, and kept both
    sticky = UserPolicyState.decode(stored["pol"].encode()).sticky["home_hero"]
    assert (sticky.action, sticky.since) == (d1.action, d1.ts)  # the first decision still limits changes
    assert len(engine._in_flight) == 0 and not engine._unstored
    assert engine.metrics.decision_state_unstored._value.get() == 0


def test_the_timer_stores_a_failed_write_without_waiting_for_traffic(runtime) -> None:  # noqa: ANN001
    engine = make_engine(runtime)
    calls = failing_writes(engine, fail={1, 2})

    async def go():  # noqa: ANN202
        out = await engine.process(msgs(event("t1", user_id="quiet", ts=T0)))
        await engine.flush_unstored()  # within a second of the failure: not tried yet
        tried_early = len(calls)
        engine._write_retry_at = 0.0  # a second later
        await engine.flush_unstored()  # fails again: still kept
        still_kept = len(engine._unstored)
        engine._write_retry_at = 0.0
        await engine.flush_unstored()
        return out, tried_early, still_kept, await fields(engine, "quiet")

    out, tried_early, still_kept, stored = asyncio.run(go())
    assert tried_early == 1 and still_kept == 1 and len(calls) == 3
    assert [p.decision_id for p in pending_decisions(UserState("quiet", stored))] == [out.decisions[0].decision_id]
    assert len(engine._in_flight) == 0 and engine.metrics.decision_state_unstored._value.get() == 0


def test_a_kept_write_does_not_bring_an_erased_user_back(runtime) -> None:  # noqa: ANN001
    engine = make_engine(runtime)
    failing_writes(engine, fail={1})

    async def go():  # noqa: ANN202
        await engine.process(msgs(event("e1", user_id="gone", ts=T0), event("e2", user_id="stays", ts=T0)))
        await engine.store.client.delete(engine.store.key("gone"))  # what `cadence erase-user gone` does ...
        assert engine.erased is not None
        engine.erased = engine.erased.with_users(["gone"])  # ... and every worker then follows
        engine._write_retry_at = 0.0
        await engine.flush_unstored()
        return await engine.store.client.exists(engine.store.key("gone")), await fields(engine, "stays")

    gone_exists, stays = asyncio.run(go())
    assert gone_exists == 0
    assert pending_decisions(UserState("stays", stays))  # the other user's kept state was stored


def test_the_kept_writes_are_bounded_oldest_dropped_first(runtime) -> None:  # noqa: ANN001
    from engine.records import EngineConfig

    engine = make_engine(runtime)
    engine.config = EngineConfig(retry_buffer_max=2)
    failing_writes(engine, fail={1, 2, 3, 4})

    async def go():  # noqa: ANN202
        for k in range(3):  # three batches of one user each while Redis refuses writes
            await engine.process(msgs(event(f"b{k}", user_id=f"u{k}", ts=T0 + k)))
        return [set(w) for _, w in engine._unstored]

    kept = asyncio.run(go())
    assert kept == [{"u1"}, {"u2"}]
    assert engine.metrics.decision_state_lost._value.get() == 1
    assert engine.metrics.decision_state_unstored._value.get() == 2
    assert len(engine._in_flight) == 2  # the dropped write is no longer patched into reads


def test_a_batch_waits_for_an_earlier_one_still_deciding_for_its_user(runtime) -> None:  # noqa: ANN001
    # The intake's batch and a /decide batch run concurrently. A batch's writes used to be registered only
    # after its last chunk was decided, so a /decide for a user of its first chunk read the state without
    # that decision, and the later write replaced the other's pending decision and policy state.
    engine = make_engine(runtime)
    store = engine.store
    read_ahead = store._read_ahead
    held = asyncio.Event()
    calls: list[int] = []

    async def slow_second_chunk(conn, updates):  # noqa: ANN001, ANN202
        calls.append(len(updates))
        if len(calls) == 2:
            await held.wait()  # Redis slow to answer the intake batch's second chunk
        return await read_ahead(conn, updates)

    store._read_ahead = slow_second_chunk  # type: ignore[method-assign]

    async def go():  # noqa: ANN202
        docs = [event("i-same", user_id="same")] + [event(f"i{k}", user_id=f"o{k}", ts=T0 + k * 0.01)
                                                   for k in range(99)]
        intake = asyncio.ensure_future(engine.process(msgs(*docs)))
        await asyncio.sleep(0.2)  # chunk 1 (with "same") decided, chunk 2's reply held back
        http = asyncio.ensure_future(engine.process(msgs(event("h-same", user_id="same", ts=T0 + 1))))
        await asyncio.sleep(0.2)
        waited = not http.done()
        free = await engine.process(msgs(event("h-free", user_id="free", ts=T0 + 1)))  # no user in common
        held.set()
        first, second = await intake, await http
        stored = (await store.read("same")).fields
        click = await engine.process(msgs(event("c-same", user_id="same", ts=T0 + 30, etype="click",
                                                decision_id=second.decisions[0].decision_id)))
        return waited, free, first, second, stored, click

    waited, free, first, second, stored, click = asyncio.run(go())
    assert len(calls) >= 2  # the intake batch did read in two chunks
    assert waited and len(free.decisions) == 1
    by_intake = next(d for d in first.decisions if d.user_id == "same")
    kept = [p.decision_id for p in pending_decisions(UserState("same", stored))]
    assert by_intake.decision_id in kept and second.decisions[0].decision_id in kept
    assert [s.kind for s in click.learning] == ["reward"]  # the /decide decision is found and credited
