"""Reward join on event time: each reward credited to the right decision, once, inside its window."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from contracts.events import Event, parse_event
from engine.attribution import Credit, Windows, credit, match_pending
from engine.pending import KEEP, PendingDecision, pending_decisions, slot_with
from features.state import UserState

T0 = 1_767_571_200.0
WINDOWS = Windows(click_s=1800, conversion_s=7 * 86400)


def pending(decision_id: str, placement: str, action: str, ts: float) -> PendingDecision:
    return PendingDecision(decision_id, placement, action, 0.5, ts, 3, np.arange(20.0))


def reward(etype: str, ts: float, **fields: object) -> Event:
    doc = {"event_id": f"r{ts}", "user_id": "u1", "ts": ts, "type": etype, **fields}
    result = parse_event(orjson.dumps(doc), "web-events")
    assert isinstance(result, Event), result
    return result


def test_matches_by_decision_id_first() -> None:
    decisions = [pending("d1", "home_hero", "a", T0), pending("d2", "product_sidebar", "b", T0 + 5)]
    assert match_pending(reward("click", T0 + 10, decision_id="d1"), decisions) is decisions[0]
    # an id the ring does not keep, of an action no kept decision showed: nothing to credit
    assert match_pending(reward("click", T0 + 10, decision_id="zz", offer_id="c"), decisions) is None


def test_without_decision_id_takes_the_latest_with_the_same_action() -> None:
    decisions = [pending("d1", "home_hero", "a", T0), pending("d2", "product_sidebar", "a", T0 + 5),
                 pending("d3", "x", "b", T0 + 9)]
    assert match_pending(reward("click", T0 + 10, offer_id="a"), decisions).decision_id == "d2"
    assert match_pending(reward("click", T0 + 10), decisions).decision_id == "d3"


def test_without_decision_id_a_reward_read_late_goes_to_the_decision_it_followed() -> None:
    # the next page view's decision (T0 + 100) is already pending when a click from T0 + 50 is read
    decisions = [pending("d2", "home_hero", "a", T0 + 100), pending("d1", "home_hero", "a", T0)]
    click = reward("click", T0 + 50, offer_id="a", placement="home_hero")
    target = match_pending(click, decisions)
    assert target is not None and target.decision_id == "d1"
    assert credit(click, target, WINDOWS) is Credit.CREDITED
    early = reward("click", T0 - 5, offer_id="a", placement="home_hero")  # before every decision: not theirs
    assert credit(early, match_pending(early, decisions), WINDOWS) is Credit.BEFORE_DECISION


@pytest.mark.parametrize(
    ("etype", "delay", "outcome"),
    [
        ("click", 60, Credit.CREDITED),
        ("click", 1799, Credit.CREDITED),
        ("click", 1801, Credit.LATE),
        ("conversion", 6 * 86400, Credit.CREDITED),
        ("conversion", 8 * 86400, Credit.LATE),
        ("click", -5, Credit.BEFORE_DECISION),
    ],
)
def test_attribution_windows_on_event_time(etype: str, delay: float, outcome: Credit) -> None:
    d = pending("d1", "home_hero", "a", T0)
    assert credit(reward(etype, T0 + delay, decision_id="d1"), d, WINDOWS) is outcome


def test_a_reward_type_is_credited_once_per_decision() -> None:
    d = pending("d1", "home_hero", "a", T0)
    assert credit(reward("click", T0 + 10, decision_id="d1"), d, WINDOWS) is Credit.CREDITED
    assert credit(reward("click", T0 + 20, decision_id="d1"), d, WINDOWS) is Credit.ALREADY_CREDITED
    assert credit(reward("conversion", T0 + 30, decision_id="d1", revenue=5), d, WINDOWS) is Credit.CREDITED
    assert d.credited == ["click", "conversion"]


def test_no_pending_decision() -> None:
    assert credit(reward("click", T0), None, WINDOWS) is Credit.NO_DECISION


def test_pending_decisions_round_trip_through_their_field() -> None:
    d = pending("d1", "home_hero", "offer_x", T0)
    d.credited.append("click")
    state = UserState("u1", {d.field: slot_with(None, d)})
    (back,) = pending_decisions(state)
    assert (back.decision_id, back.placement, back.action, back.probability, back.ts, back.policy_version,
            back.credited) == ("d1", "home_hero", "offer_x", 0.5, T0, 3, ["click"])
    np.testing.assert_allclose(back.x, d.x, rtol=1e-3)  # float16: three significant digits
    assert state.fields[d.field].isascii()


def test_the_last_decisions_of_a_placement_stay_creditable() -> None:
    state = UserState("u1", {})
    for i in range(KEEP + 2):
        newer = pending(f"d{i}", "home_hero", "a", T0 + i)
        state.fields[newer.field] = slot_with(state, newer)
    kept = [p.decision_id for p in pending_decisions(state)]
    assert kept == [f"d{i}" for i in range(KEEP + 1, 1, -1)]  # newest first, the oldest two dropped
    superseded = match_pending(reward("conversion", T0 + 100, decision_id="d2", revenue=5), pending_decisions(state))
    assert superseded is not None and superseded.decision_id == "d2"
    assert credit(reward("conversion", T0 + 100, decision_id="d2", revenue=5), superseded, WINDOWS) is Credit.CREDITED
    state.fields[superseded.field] = slot_with(state, superseded)  # the credit replaces that one entry
    assert [(p.decision_id, p.credited) for p in pending_decisions(state)][2] == ("d2", ["conversion"])


def _hex_id(i: int) -> str:
    return f"{i:024x}"  # the engine's decision ids: stored in the compact text form


def _keep(state: UserState, *decisions: PendingDecision) -> list[str]:
    for d in decisions:
        state.fields[d.field] = slot_with(state, d)
    return [p.action for p in pending_decisions(state)]


@pytest.mark.parametrize("ident", [_hex_id, lambda i: f"d{i}"], ids=["compact", "list form"])
def test_a_decision_that_showed_none_never_pushes_out_an_action_shown_before_it(ident) -> None:  # noqa: ANN001
    # "none" decisions of the lift's groups are kept so a reward after them counts in the lift; an action's
    # entry still waits for its reward to be learned (late rewards too): KEEP actions and the newest "none"
    state = UserState("u1", {})
    shown = [pending(ident(i), "home_hero", f"offer_{i}", T0 + i) for i in range(KEEP)]
    assert _keep(state, *shown) == [f"offer_{i}" for i in range(KEEP - 1, -1, -1)]
    assert _keep(state, pending(ident(10), "home_hero", "none", T0 + 10)) == [
        "none", *(f"offer_{i}" for i in range(KEEP - 1, -1, -1))]
    assert _keep(state, pending(ident(11), "home_hero", "offer_x", T0 + 11)) == [
        "offer_x", "none", *(f"offer_{i}" for i in range(KEEP - 1, 0, -1))]  # the oldest action left
    state = UserState("u1", {})
    nones = [pending(ident(20 + i), "home_hero", "none", T0 + i) for i in range(KEEP)]
    assert _keep(state, *nones) == ["none"]
    assert [p.decision_id for p in pending_decisions(state)] == [ident(22)]  # the newest
    assert _keep(state, pending(ident(30), "home_hero", "offer_a", T0 + 30)) == ["offer_a", "none"]
    assert _keep(state, pending(ident(31), "home_hero", "none", T0 + 31)) == ["none", "offer_a"]


def test_a_reward_without_decision_id_goes_to_the_action_shown_not_to_a_later_none() -> None:
    offer = pending("d1", "home_hero", "offer_a", T0)
    nothing = pending("d2", "home_hero", "none", T0 + 600)
    conversion = reward("conversion", T0 + 3600, revenue=5)
    assert match_pending(conversion, [nothing, offer], WINDOWS) is offer  # showing nothing cannot cause it
    # the offer is past the conversion window: the "none" takes it, so it still counts in the user's lift group
    later_nothing = pending("d3", "home_hero", "none", T0 + 7.5 * 86400)
    late = reward("conversion", T0 + 8 * 86400, revenue=5)
    assert match_pending(late, [later_nothing, nothing, offer], WINDOWS) is later_nothing
    assert credit(late, later_nothing, WINDOWS) is Credit.CREDITED
    # a user who was only ever shown "none" (control group, or a treated "none"): the latest "none"
    assert match_pending(conversion, [nothing], WINDOWS) is nothing


def test_a_none_after_actions_whose_windows_closed_is_kept_and_an_action_with_a_late_reward_too() -> None:
    # a returning user's 3 shown decisions, days past every window, kept the new "none" out of the ring: the
    # conversion after it was then LATE for the old offer and missing from the treated group of the lift
    state = UserState("u1", {})
    _keep(state, *(pending(_hex_id(i), "home_hero", f"offer_{i}", T0 + i) for i in range(KEEP)))
    later = pending(_hex_id(9), "home_hero", "none", T0 + 10 * 86400)
    _keep(state, later)
    conversion = reward("conversion", T0 + 10 * 86400 + 600, revenue=5)
    assert match_pending(conversion, pending_decisions(state), WINDOWS).decision_id == later.decision_id
    # an action shown, two "none" after it, then a new action: a conversion within the first action's window
    # read only now (late) still goes to it, not to a "none"
    state = UserState("u1", {})
    first = pending(_hex_id(20), "home_hero", "promo_a", T0)
    _keep(state, first, pending(_hex_id(21), "home_hero", "none", T0 + 3600),
          pending(_hex_id(22), "home_hero", "none", T0 + 7200),
          pending(_hex_id(23), "home_hero", "promo_b", T0 + 7 * 86400 + 60))
    late = reward("conversion", T0 + 6 * 86400, revenue=5)
    target = match_pending(late, pending_decisions(state), WINDOWS)
    assert target is not None and target.decision_id == first.decision_id


def test_a_second_conversion_goes_to_the_later_none_not_to_the_action_already_credited() -> None:
    offer = pending("d1", "home_hero", "offer_a", T0)
    offer.credited.append("conversion")  # the first conversion
    nothing = pending("d2", "home_hero", "none", T0 + 600)
    second = reward("conversion", T0 + 3600, revenue=5)
    target = match_pending(second, [nothing, offer], WINDOWS)
    assert target is nothing and credit(second, target, WINDOWS) is Credit.CREDITED


def test_a_decision_id_pushed_out_of_the_ring_is_matched_as_a_reward_without_one() -> None:
    # offer shown and clicked, KEEP more views of the placement with the same (sticky) offer, then the
    # conversion with the first decision's id, 10 minutes later: well inside 7 days, it was lost as no_decision
    state = UserState("u1", {})
    first = pending(_hex_id(0), "home_hero", "offer_10pct", T0)
    first.credited.append("click")
    _keep(state, first, *(pending(_hex_id(k), "home_hero", "offer_10pct", T0 + 60 * k) for k in range(1, KEEP + 1)))
    kept = pending_decisions(state)
    assert first.decision_id not in {p.decision_id for p in kept}
    conversion = reward("conversion", T0 + 600, decision_id=first.decision_id, offer_id="offer_10pct", revenue=18)
    target = match_pending(conversion, kept, WINDOWS)
    assert target is not None and target.decision_id == _hex_id(KEEP)  # the latest showing that offer
    assert credit(conversion, target, WINDOWS) is Credit.CREDITED
    # the next one goes to the one before it (not credited yet), never to a decision already credited
    again = reward("conversion", T0 + 700, decision_id=first.decision_id, offer_id="offer_10pct", revenue=18)
    assert match_pending(again, kept, WINDOWS).decision_id == _hex_id(KEEP - 1)
    for p in kept:
        p.credited.append("conversion")
    assert match_pending(again, kept, WINDOWS) is None  # every one credited: no_decision, not already_credited
    # another action, another placement, or past the window: not that reward's decision
    other = reward("conversion", T0 + 600, decision_id=first.decision_id, offer_id="offer_x", revenue=18)
    elsewhere = reward("click", T0 + 600, decision_id=first.decision_id, placement="product_sidebar")
    late_click = reward("click", T0 + 60 * KEEP + 1801, decision_id=first.decision_id, offer_id="offer_10pct")
    fresh = pending_decisions(state)
    assert [match_pending(e, fresh, WINDOWS) for e in (other, elsewhere, late_click)] == [None, None, None]


def test_a_decision_id_no_longer_kept_never_falls_back_to_a_none() -> None:
    nothing = pending("d2", "home_hero", "none", T0 + 60)
    conversion = reward("conversion", T0 + 600, decision_id="gone", revenue=18)
    assert match_pending(conversion, [nothing], WINDOWS) is None  # "none" cannot be what the id showed
