"""Pending decisions in their user's hash: compact form, the list form before it, and what both decode to."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.decisions import decision_id_for
from contracts.events import DEVICES, Event, parse_event
from engine.pending import KEEP, PendingDecision, pending_decisions, slot_with
from features.context import CONTEXT_DIM, SEGMENTS, build_context
from features.state import UserState

T0 = 1_767_600_000.0

# Stored by the engine before the compact form (three decisions of one placement, one credited).
OLD_FIELD = (
    '[["c3389347ce7a9a80bb5fbf56","email_new_arrivals",0.986667,1767612720.2,61128,[],'
    '"ADwAAAA8AAAAAAAAAAAAPMwv8bsAAAAAAAAAAAAAAAAAAK4RAABQAA==","exploit"],'
    '["82d3d93a555840c8db8e7dbb","email_new_arrivals",0.986667,1767607277.8,35046,["click"],'
    '"ADwAAAA8AAAAAAAAAAAAPOw387oAAAAAAAAAAAAAAAAAAAAAAAAtAA==","exploit"],'
    '["593fda23c6d57e3adafa2848","email_new_arrivals",0.986667,1767606483.0,31174,[],'
    '"ADwAAAA8AAAAAAAAAAAAPFs4troAAAAAAAAAAAAAAAAAAAAAAAAoAA==","exploit"]]'
)


def f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def context(i: int, ts: float) -> np.ndarray:
    """A context as the engine builds it, for a user with some history (varies with ``i``)."""
    event = parse_event(orjson.dumps({
        "event_id": f"e{i}", "user_id": "u", "ts": ts, "type": "page_view", "page": "/",
        "placement": "home_hero", "device": DEVICES[i % len(DEVICES)], "segment": SEGMENTS[i % len(SEGMENTS)],
    }), "web-events")
    assert isinstance(event, Event), event
    fields = {"pvh": f"{int(ts // 3600)}:{i % 7}:1", "pvd": f"{int(ts // 86400)}:{i % 11}:0",
              "t:pv": repr(ts - 60 * (i % 5)), "fs": repr(ts - 3600 * (i % 13))}
    if i % 3:
        fields["ckw"] = f"{int(ts // 604800)}:{i % 4}:0"
    return build_context(event, UserState("u", fields))


def decision(i: int, ts: float, action: str = "offer_a", placement: str = "home_hero", **kw) -> PendingDecision:
    kw.setdefault("x", context(i, ts))
    return PendingDecision(decision_id_for(f"e{i}", placement), placement, action, kw.pop("probability", 1.0), ts,
                           kw.pop("policy_version", 1000 + i), **kw)


def same(a: PendingDecision, b: PendingDecision) -> bool:
    """Equal as the engine reads them: every field, the context rounded to float16 as stored."""
    return (a.decision_id, a.placement, a.action, round(a.probability, 6), a.ts, a.policy_version, a.credited,
            a.mode) == (b.decision_id, b.placement, b.action, b.probability, b.ts, b.policy_version, b.credited,
                        b.mode) and f16(a.x).tobytes() == b.x.tobytes()


def stored(*decisions: PendingDecision) -> UserState:
    state = UserState("u", {})
    for d in decisions:
        state.fields[d.field] = slot_with(state, d)
    return state


def test_the_engines_decisions_take_the_compact_form_and_read_back_exactly() -> None:
    ds = [decision(i, T0 + 977.3 * i, action=f"offer_{i % 2}", probability=[1.0, 0.986667, 0.05][i % 3],
                   credited=[[], ["click"], ["click", "conversion"], ["conversion"]][i % 4],
                   mode=["exploit", "explore", "sticky", "holdout"][i % 4]) for i in range(40)]
    for d in ds:
        assert d.to_compact() is not None, d
        (back,) = pending_decisions(stored(d))
        assert same(d, back)
    field = stored(*ds).fields["pd:home_hero"]
    assert field.isascii() and not field.startswith("[") and field.count("|") == KEEP - 1


def test_the_float16_bytes_at_hand_write_what_x_writes() -> None:
    """A batch's decisions and decoded entries carry x in float16 (``x16``): the same compact form as x."""
    for i in range(12):
        d = decision(i, T0 + 977.3 * i, probability=[1.0, 0.05][i % 2], credited=[[], ["click"]][i % 2])
        given = decision(i, T0 + 977.3 * i, probability=[1.0, 0.05][i % 2], credited=[[], ["click"]][i % 2],
                         x16=d.x.astype(np.float16).tobytes())
        assert given.to_compact() == d.to_compact() is not None
        (back,) = pending_decisions(stored(d))
        assert back.x16 == d.x.astype(np.float16).tobytes() and back.to_compact() == d.to_compact()


def test_a_compact_entry_is_a_third_of_a_list_form_one() -> None:
    d = decision(3, T0, action="offer_loyalty_points")
    compact, listed = stored(d).fields[d.field], orjson.dumps([d.to_wire()]).decode()
    print(f"one decision: compact {len(compact)} bytes, list form {len(listed)}")
    assert len(compact) < 0.5 * len(listed)
    # the action of an entry that repeats the one before it is left out
    two = stored(d, decision(4, T0 + 60, action="offer_loyalty_points")).fields[d.field]
    assert two.count("offer_loyalty_points") == 1 and len(two) < 2 * len(compact)


def test_the_list_form_stored_before_still_reads_and_takes_new_decisions() -> None:
    state = UserState("u", {"pd:newsletter": OLD_FIELD})
    old = pending_decisions(state)
    assert [(p.decision_id, p.probability, p.ts, p.policy_version, p.credited) for p in old] == [
        ("c3389347ce7a9a80bb5fbf56", 0.986667, 1767612720.2, 61128, []),
        ("82d3d93a555840c8db8e7dbb", 0.986667, 1767607277.8, 35046, ["click"]),
        ("593fda23c6d57e3adafa2848", 0.986667, 1767606483.0, 31174, []),
    ]
    x64 = orjson.loads(OLD_FIELD)[0][6]
    assert old[0].x.tobytes() == np.frombuffer(base64.b64decode(x64), dtype=np.float16).astype(np.float64).tobytes()
    # a credit rewrites one old entry; a new decision pushes the oldest out; nothing else changes
    old[1].credited.append("conversion")
    state.fields["pd:newsletter"] = slot_with(state, old[1])
    new = decision(7, 1767613000.0, action="email_new_arrivals", placement="newsletter")
    state.fields["pd:newsletter"] = slot_with(state, new)
    after = pending_decisions(state)
    assert [p.decision_id for p in after] == [new.decision_id, old[0].decision_id, old[1].decision_id]
    assert same(new, after[0]) and same(old[0], after[1]) and same(old[1], after[2])
    assert after[2].credited == ["click", "conversion"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"decision_id": "d1"}, "an id that is not 24 hex digits"),
        ({"decision_id": "C3389347CE7A9A80BB5FBF56"}, "upper-case hex (would read back lower-case)"),
        ({"mode": "surprise"}, "a mode without a letter"),
        ({"credited": ["refund"]}, "a reward type without a letter"),
        ({"policy_version": -1}, "a negative version"),
        ({"probability": 1e-7 + 0.5}, "(rounded to 6 digits, still compact)"),
        ({"x": np.arange(20.0)}, "a context whose flag positions are not 0 or 1"),
        ({"x": np.zeros(3)}, "a context shorter than the policy block"),
        ({"x": np.concatenate([context(1, T0), np.zeros(20)])}, "a history block longer than the head can mark"),
        ({"ts": T0 + 900.25}, "an hour (sin, cos) that is not the one of ts"),
    ],
)
def test_what_the_compact_form_cannot_hold_is_kept_in_the_list_form(change: dict, why: str) -> None:
    d = decision(1, T0)
    for k, v in change.items():
        setattr(d, k, v)
    state = stored(decision(2, T0 - 100), d)
    back = {p.decision_id: p for p in pending_decisions(state)}[d.decision_id]
    assert same(d, back), why


@pytest.mark.parametrize("action", ["a,b", "a|b", "", "|", "ünïcode"])
def test_any_action_name_survives(action: str) -> None:
    ds = [decision(i, T0 + i, action=action if i % 2 else "plain") for i in range(4)]
    state = stored(*ds)
    assert [p.action for p in pending_decisions(state)] == [d.action for d in ds[::-1][:KEEP]]


def test_a_damaged_entry_is_refused_with_its_text() -> None:
    with pytest.raises(ValueError, match="not a compact entry"):
        pending_decisions(UserState("u", {"pd:p": "AAAA"}))
    with pytest.raises(ValueError, match="not a compact entry"):
        pending_decisions(UserState("u", {"pd:p": '["AAAA,x"]'}))


def reference(entries: list[PendingDecision], new: PendingDecision) -> list[PendingDecision]:
    """What a field holds after ``slot_with``, by its definition (the list form's rule, read back)."""
    others = [e for e in entries if e.decision_id != new.decision_id]
    return sorted([new, *others], key=lambda e: e.ts, reverse=True)[:KEEP]


step = st.tuples(
    st.integers(0, 7),  # which decision (a repeated one is written again: a credit)
    st.integers(0, 4),  # ts, in steps of 1000.5 s (ties happen)
    st.sampled_from(["offer_a"] * 3 + ["offer_b"] * 3 + ["a,b", "x|y"]),
    st.sampled_from([[], ["click"], ["click", "conversion"]]),
    st.integers(0, 7).map(lambda v: v == 0),  # written in the list form (an id the compact form cannot hold)
)


@settings(max_examples=400, deadline=None)
@given(st.lists(step, min_size=1, max_size=12))
def test_any_sequence_of_writes_reads_back_as_the_rule_says(steps: list) -> None:
    state = UserState("u", {})
    expected: list[PendingDecision] = []
    made: dict[int, PendingDecision] = {}
    for which, t, action, credited, listed in steps:
        if which in made:  # the same decision again, as a credit writes it: same ts, action, context
            d = made[which]
            d = PendingDecision(d.decision_id, d.placement, d.action, d.probability, d.ts, d.policy_version, d.x,
                                list(credited), d.mode)
        else:
            ts = T0 + 1000.5 * t
            ident = f"id{which}" if listed else hashlib.blake2b(bytes([which]), digest_size=12).hexdigest()
            d = PendingDecision(ident, "home_hero", action, 0.5 if which % 2 else 1.0, ts, which, context(which, ts),
                                list(credited), "sticky")
            made[which] = d
        expected = reference(expected, d)
        state.fields[d.field] = slot_with(state, d)
        got = pending_decisions(state)
        assert len(got) == len(expected)
        assert all(same(e, g) for e, g in zip(expected, got, strict=True)), (expected, got)
        assert state.fields[d.field].startswith("[") == any(e.to_compact() is None or "|" in e.action for e in expected)


def test_contexts_of_every_shape_the_engine_makes_fit_the_compact_form() -> None:
    assert CONTEXT_DIM == 20  # the layout _pack reads: 8 flags, hour, weekend, 9 history values
    rng = np.random.default_rng(3)
    for i in range(300):
        ts = T0 + float(rng.integers(0, 30 * 86400)) + round(float(rng.random()), 3)
        d = decision(i, ts)
        assert d.to_compact() is not None, (i, ts)
