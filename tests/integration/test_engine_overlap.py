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
