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

    async def slow_first_write(writes):  # noqa: ANN001, ANN202
        n = sum(step.startswith("sent") for step in order) + 1
        order.append(f"sent {n}")
        if n == 1:
            await release.wait()  # the first batch's write stays in flight while the second is decided
        await write_fields(writes)
        order.append(f"stored {n}")

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


def test_a_failed_write_is_not_patched_into_later_batches(runtime) -> None:  # noqa: ANN001
    from features.store import FeatureStoreError

    engine = make_engine(runtime)
    write_fields = engine.store.write_fields
    calls = []

    async def first_write_fails(writes):  # noqa: ANN001, ANN202
        calls.append(len(calls))
        if len(calls) == 1:
            raise FeatureStoreError("feature store write failed: test")
        await write_fields(writes)

    engine.store.write_fields = first_write_fails  # type: ignore[method-assign]

    async def go():  # noqa: ANN202
        out1 = await engine.process(msgs(event("f1", user_id="lost", ts=T0)))
        out2 = await engine.process(msgs(event("f2", user_id="lost", ts=T0 + 5)))
        return out1, out2, await fields(engine, "lost")

    out1, out2, stored = asyncio.run(go())
    kept = [p.decision_id for p in pending_decisions(UserState("lost", stored)) if p.placement == "home_hero"]
    assert kept == [out2.decisions[0].decision_id]  # the first was never stored, and is not pretended to be
    assert len(engine._in_flight) == 0


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
