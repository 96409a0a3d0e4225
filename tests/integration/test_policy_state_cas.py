"""Two processes deciding for one user at the same moment (README "Two processes deciding for one user"):
the policy-state write is a compare-and-set, and a write that lost the race is merged with the other
process's state (policy/merge.py) instead of overwriting it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from cadence.metrics import Metrics
from cadence.runtime import Runtime
from engine.decide import POLICY_STATE_FIELD
from features.store import RedisFeatureStore
from policy.state import UserPolicyState
from tests.helpers import T0, event
from tests.integration.test_engine_on_redis import fields, make_engine, msgs, run

pytestmark = pytest.mark.integration

NOON = T0 + 12 * 3600  # outside the email quiet hours


def two_engines(runtime: Runtime, metrics: Metrics | None = None):  # noqa: ANN201
    """A stream worker and an HTTP replica on the same namespace (the same users' hashes)."""
    stream, replica = make_engine(runtime, metrics), make_engine(runtime, metrics)
    replica.store.namespace = stream.store.namespace
    return stream, replica


def test_the_email_cap_holds_with_two_processes_deciding_for_the_user_at_once(runtime: Runtime) -> None:
    metrics = Metrics()
    stream, replica = two_engines(runtime, metrics)

    async def go() -> tuple[list[str], dict[str, str]]:
        shown = []
        for r in range(6):  # one hour apart, all in the 7-day window
            ts = NOON + r * 3600
            email = stream.process(msgs(event(f"e{r}", etype="email_request", placement="newsletter", ts=ts),
                                        topic="email-events"))
            web = replica.process(msgs(event(f"w{r}", ts=ts + 1)))
            out_e, _ = await asyncio.gather(email, web)
            shown += [d.action for d in out_e.decisions]
        return shown, await fields(stream, "u1")

    shown, stored = run(go())
    assert [a != "none" for a in shown] == [True] * 3 + [False] * 3  # 3 emails, then none: max_contacts = 3
    state = UserPolicyState.decode(stored[POLICY_STATE_FIELD].encode())
    assert len(state.contacts["email"].contacts) == 3 and "home_hero" in state.sticky  # both processes' state
    assert metrics.policy_state_merges.labels("merged")._value.get() > 0  # the race did happen (either process lost it)


def test_write_fields_sets_the_policy_state_only_if_it_holds_the_expected_value(runtime: Runtime) -> None:
    client = aioredis.Redis.from_url(runtime.redis_url or "")
    store = RedisFeatureStore(client, f"cas{uuid.uuid4().hex[:8]}", ttl_s=3600, dedup_ring=16)

    async def go():  # noqa: ANN202
        pol = POLICY_STATE_FIELD
        # absent expected absent: written
        first = await store.write_fields({"a": {pol: "A1", "x": "1"}}, {"a": None}, pol)
        # stale expectation: pol not written, the other field is, the reply holds the current value
        stale = await store.write_fields({"a": {pol: "A2", "x": "2"}, "b": {pol: "B1"}}, {"a": "A0", "b": None}, pol)
        after_stale = await store.read("a"), await store.read("b")
        # the right expectation: written
        right = await store.write_fields({"a": {pol: "A3"}}, {"a": "A1"}, pol)
        # expected absent, but it is there
        present = await store.write_fields({"a": {pol: "A4"}}, {"a": None}, pol)
        # expected a value on a user Redis does not have: reported with None
        missing = await store.write_fields({"c": {pol: "C1"}}, {"c": "C0"}, pol)
        # no expectation for the user: a plain write, as before
        plain = await store.write_fields({"d": {pol: "D1"}})
        reads = [await store.read(u) for u in "acd"]
        await store.close()
        await client.aclose()
        return first, stale, after_stale, right, present, missing, plain, reads

    first, stale, (a, b), right, present, missing, plain, (a2, c, d) = run(go())
    assert first == {} and right == {} and plain == {}
    assert stale == {"a": "A1"}
    assert a.fields[POLICY_STATE_FIELD] == "A1" and a.fields["x"] == "2" and b.fields[POLICY_STATE_FIELD] == "B1"
    assert present == {"a": "A3"} and a2.fields[POLICY_STATE_FIELD] == "A3"
    assert missing == {"c": None} and c.fields == {}
    assert d.fields[POLICY_STATE_FIELD] == "D1"


def test_a_lost_race_is_merged_and_stored_in_the_same_write(runtime: Runtime) -> None:
    """Another process writes the policy state between this engine's read and its write: the write's
    compare-and-set fails, the engine merges and writes again; the user's pending decision is stored by the
    first call. Without a conflict one call is made."""
    metrics = Metrics()
    engine = make_engine(runtime, metrics)
    other = make_engine(runtime)
    other.store.namespace = engine.store.namespace
    write_fields = engine.store.write_fields
    calls: list[dict] = []

    async def racing(writes, *cas):  # noqa: ANN001, ANN202
        calls.append({u: dict(f) for u, f in writes.items()})
        if len(calls) == 1:  # the other process decides an email for the user meanwhile
            await other.process(msgs(event("o1", etype="email_request", placement="newsletter", ts=NOON),
                                     topic="email-events"))
        return await write_fields(writes, *cas)

    engine.store.write_fields = racing  # type: ignore[method-assign]

    async def go():  # noqa: ANN202
        await engine.process(msgs(event("w1", ts=NOON + 1)))
        stored = await fields(engine, "u1")
        first_calls = len(calls)
        await engine.process(msgs(event("w2", ts=NOON + 2)))
        return stored, first_calls

    stored, first_calls = run(go())
    assert first_calls == 2 and len(calls) == 3  # the second batch, with no conflict: one call
    assert len(calls) == 3 and set(calls[1]["u1"]) == {POLICY_STATE_FIELD}
    state = UserPolicyState.decode(stored[POLICY_STATE_FIELD].encode())
    assert "home_hero" in state.sticky and len(state.contacts["email"].contacts) == 1
    assert metrics.policy_state_merges.labels("merged")._value.get() == 1


def test_a_user_erased_while_the_write_is_out_is_not_merged(runtime: Runtime) -> None:
    """The erasure drops the user's fields from the write under way (Engine.erased); a conflict Redis reported
    for that user must then be skipped, not looked up in the write: that raised a KeyError out of the batch."""
    from features.keys import user_digest

    engine = make_engine(runtime)
    store = engine.store
    real_write = store.write_fields

    async def erased_during(writes, expected=None, cas_field=None):  # noqa: ANN001, ANN202
        await real_write(writes, expected, cas_field)
        engine.erased = {user_digest("u1")}  # the follow timer ran while the reply was on its way
        return {"u1": "another process's state"}

    async def go() -> list[str]:
        store.write_fields = erased_during
        out = await engine.process(msgs(event("e1", ts=NOON)))
        store.write_fields = real_write
        return [d.user_id for d in out.decisions]

    assert run(go()) == ["u1"]  # decided, and the write finished without merging the erased user
