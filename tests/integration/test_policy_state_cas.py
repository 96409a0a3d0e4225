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
from tests.integration.test_engine_on_redis import erasure_digest, fields, make_engine, msgs, run

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
    namespace = f"cas{uuid.uuid4().hex[:8]}"
    store = RedisFeatureStore(client, namespace, ttl_s=3600, dedup_ring=16,
                              user_digest=erasure_digest(runtime, namespace))

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
    engine = make_engine(runtime)
    store = engine.store
    real_write = store.write_fields

    async def erased_during(writes, expected=None, cas_field=None):  # noqa: ANN001, ANN202
        await real_write(writes, expected, cas_field)
        assert engine.erased is not None
        engine.erased = engine.erased.with_users(["u1"])  # the follow timer ran while the reply was on its way
        return {"u1": "another process's state"}

    async def go() -> list[str]:
        store.write_fields = erased_during
        out = await engine.process(msgs(event("e1", ts=NOON)))
        store.write_fields = real_write
        return [d.user_id for d in out.decisions]

    assert run(go()) == ["u1"]  # decided, and the write finished without merging the erased user


def lost_reply_engine(runtime: Runtime, metrics: Metrics):  # noqa: ANN201
    """An engine whose next decision-state write, once ``lose`` is set, Redis applies but whose reply is lost
    (a socket timeout): the engine keeps the write and retries it."""
    from features.store import FeatureStoreError

    engine = make_engine(runtime, metrics)
    real = engine.store.write_fields
    lose = {"next": False}

    async def write_fields(writes, expected=None, cas_field=None):  # noqa: ANN001, ANN202
        out = await real(writes, expected, cas_field)
        if lose["next"]:
            lose["next"] = False
            raise FeatureStoreError("feature store write failed: no reply from Redis within 2 s")
        return out

    engine.store.write_fields = write_fields  # type: ignore[method-assign]
    return engine, lose


def email(event_id: str, ts: float, user_id: str = "u1") -> list:
    return msgs(event(event_id, user_id, etype="email_request", placement="newsletter", ts=ts),
                topic="email-events")


def test_a_retried_write_whose_reply_was_lost_is_not_merged_with_itself(runtime: Runtime) -> None:
    """Redis applied a write (a click) but its reply was lost; the engine decides another email while the write
    is kept, then retries both. Redis then holds the engine's own earlier write, not another process's: it is
    replaced, not merged with (merged, the click looked concurrent with the later email and wiped out its
    exposure: ignored streak 0 instead of 1)."""
    metrics = Metrics()
    engine, lose = lost_reply_engine(runtime, metrics)

    async def go():  # noqa: ANN202
        first = (await engine.process(email("e1", NOON))).decisions[0]
        lose["next"] = True
        await engine.process(msgs(event("c1", etype="email_click", ts=NOON + 60, decision_id=first.decision_id),
                                  topic="email-events"))
        kept = len(engine._unstored)
        second = (await engine.process(email("e2", NOON + 3600))).decisions[0]  # kept with the click's write
        engine._write_retry_at = 0.0  # a second later
        await engine.flush_unstored()
        return first, second, kept, engine._unstored, await fields(engine, "u1")

    first, second, kept, unstored, stored = run(go())
    assert first.action != "none" and second.action != "none" and kept == 1 and not unstored
    history = UserPolicyState.decode(stored[POLICY_STATE_FIELD].encode()).contacts["email"]
    assert history.ignored == 1 and len(history.contacts) == 2  # the email after the click, ignored so far
    assert metrics.policy_state_merges.labels("merged")._value.get() == 0


def test_a_retried_write_whose_reply_was_lost_counts_each_contact_once(runtime: Runtime) -> None:
    """The same with two emails: merged with its own earlier write, the first email was counted twice."""
    metrics = Metrics()
    engine, lose = lost_reply_engine(runtime, metrics)

    async def go():  # noqa: ANN202
        lose["next"] = True
        shown = [(await engine.process(email("e1", NOON))).decisions[0].action]
        shown.append((await engine.process(email("e2", NOON + 3600))).decisions[0].action)
        engine._write_retry_at = 0.0
        await engine.flush_unstored()
        return shown, await fields(engine, "u1")

    shown, stored = run(go())
    assert "none" not in shown
    history = UserPolicyState.decode(stored[POLICY_STATE_FIELD].encode()).contacts["email"]
    assert history.contacts == [NOON, NOON + 3600] and history.ignored == 2
    assert metrics.policy_state_merges.labels("merged")._value.get() == 0


def test_another_process_writing_after_a_lost_reply_is_still_merged(runtime: Runtime) -> None:
    """A write applied with its reply lost, then another process (e.g. the partition's new owner after a
    rebalance) decides an email for the user from it: that state is not this engine's, and the retry merges it."""
    metrics = Metrics()
    engine, lose = lost_reply_engine(runtime, metrics)
    other = make_engine(runtime)
    other.store.namespace = engine.store.namespace

    async def go():  # noqa: ANN202
        lose["next"] = True
        await engine.process(email("e1", NOON))
        await other.process(email("o1", NOON + 1800))  # reads the applied write, stores its own email
        await engine.process(email("e2", NOON + 3600))
        engine._write_retry_at = 0.0
        await engine.flush_unstored()
        return await fields(engine, "u1")

    stored = run(go())
    history = UserPolicyState.decode(stored[POLICY_STATE_FIELD].encode()).contacts["email"]
    assert {NOON, NOON + 1800, NOON + 3600} <= set(history.contacts)  # the other process's email is kept
    assert metrics.policy_state_merges.labels("merged")._value.get() == 1
