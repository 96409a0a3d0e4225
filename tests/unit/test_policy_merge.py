"""The three-way merge of policy states (policy/merge.py): two processes decided from the same state."""

from __future__ import annotations

import random

import pytest

from policy.contact import DAY_S, ChannelHistory, ContactCap, ContactPolicy, channel_block, record_click, record_contact
from policy.merge import merge_histories, merge_states, merge_sticky
from policy.state import UserPolicyState
from policy.stickiness import StickyState

T0 = 1_767_571_200.0 + 12 * 3600  # 2026-01-05 12:00 UTC
EMAIL = ContactPolicy(max_contacts=3, window_days=7, suppress_after_ignored=5)
AD = ContactPolicy(max_contacts=50, window_days=7, max_per_action_per_day=6)


def contacted(policy: ContactPolicy, history: ChannelHistory | None, *times: float,
              action: str = "a") -> ChannelHistory:
    h = history
    for t in times:
        h = record_contact(policy, h, action, t)
    assert h is not None
    return h


def test_the_email_cap_holds_after_two_processes_each_sent_one() -> None:
    base = UserPolicyState({}, {"email": contacted(EMAIL, None, T0)})
    ours = UserPolicyState({}, {"email": contacted(EMAIL, base.contacts["email"], T0 + 3600)})
    theirs = UserPolicyState({"home_hero": StickyState("offer", T0 + 3601)},
                             {"email": contacted(EMAIL, base.contacts["email"], T0 + 3602)})
    merged = merge_states(base, ours, theirs)
    assert merged.contacts["email"].contacts == [T0, T0 + 3600, T0 + 3602]
    assert merged.contacts["email"].ignored == 3 and merged.contacts["email"].last_exposure == T0 + 3602
    assert merged.sticky == {"home_hero": StickyState("offer", T0 + 3601)}
    assert channel_block(EMAIL, merged.contacts["email"], T0 + 7200) is ContactCap.CHANNEL_CAP
    assert UserPolicyState.decode(merged.encode()) == merged  # stored as any other state


def test_both_sides_past_the_cap_keep_every_contact() -> None:
    base = contacted(EMAIL, None, T0, T0 + 10)
    ours = contacted(EMAIL, base, T0 + 20)
    theirs = contacted(EMAIL, base, T0 + 30)  # with ours, a fourth contact: both really went out
    merged = merge_histories(base, ours, theirs)
    assert merged.contacts == [T0, T0 + 10, T0 + 20, T0 + 30]
    assert channel_block(EMAIL, merged, T0 + 40) is ContactCap.CHANNEL_CAP
    assert record_contact(EMAIL, merged, "a", T0 + 50).contacts == [T0 + 20, T0 + 30, T0 + 50]  # trimmed again


def test_one_side_unchanged_takes_the_other_entry_whole() -> None:
    h = contacted(EMAIL, None, T0)
    s = StickyState("x", T0)
    base = UserPolicyState({"p": s}, {"email": h})
    changed = UserPolicyState({"p": StickyState("y", T0 + 5, (T0 + 5,)), "q": s},
                              {"email": contacted(EMAIL, h, T0 + 5)})
    assert merge_states(base, base, changed) == changed
    assert merge_states(base, changed, base) == changed
    # the same change on both sides: two processes each sent one in the same second, both went out
    twice = merge_states(base, changed, changed)
    assert twice.contacts["email"].contacts == [T0, T0 + 5, T0 + 5] and twice.sticky == changed.sticky
    # an entry removed on one side, untouched on the other: removed
    assert merge_states(base, UserPolicyState({}, {"email": h}), base) == UserPolicyState({}, {"email": h})
    # removed on one side (e.g. the hash expired), changed on the other: the change is kept
    assert merge_states(base, changed, UserPolicyState()) == changed


def test_an_empty_base_merges_two_new_users_states() -> None:
    ours = UserPolicyState({"p": StickyState("x", T0)}, {"email": contacted(EMAIL, None, T0)})
    theirs = UserPolicyState({"q": StickyState("y", T0 + 1)}, {"email": contacted(EMAIL, None, T0 + 1)})
    merged = merge_states(UserPolicyState(), ours, theirs)
    assert set(merged.sticky) == {"p", "q"} and merged.contacts["email"].contacts == [T0, T0 + 1]


def test_sticky_changed_on_both_sides_keeps_the_later_change_and_counts_both() -> None:
    base = StickyState("x", T0)
    ours = StickyState("y", T0 + 100, (T0 + 100,))
    theirs = StickyState("z", T0 + 50, (T0 + 50,))
    merged = merge_sticky(base, ours, theirs)
    assert merged == StickyState("y", T0 + 100, (T0 + 50, T0 + 100))
    assert merge_sticky(base, theirs, ours) == merged  # symmetric


def test_ignored_streak_with_clicks_is_never_looser_than_either_order() -> None:
    base = contacted(EMAIL, None, T0, T0 + 1, T0 + 2)  # streak 3
    clicked = record_click(base)
    assert clicked is not None
    ours = contacted(EMAIL, clicked, T0 + 10)  # click, then one: streak 1
    theirs = contacted(EMAIL, base, T0 + 11)  # streak 4
    assert merge_histories(base, ours, theirs).ignored == 2  # theirs' exposure counted after the click
    assert merge_histories(base, ours, ours).ignored == 2  # two clicks, one exposure after each
    assert merge_histories(base, clicked, contacted(EMAIL, clicked, T0 + 12)).ignored == 1
    # both clicked: every exposure after either click may have come after both
    assert merge_histories(base, ours, contacted(EMAIL, clicked, T0 + 12, T0 + 13)).ignored == 3
    # the case the history cannot show: theirs clicked, then had as many exposures as base's streak
    hidden = contacted(EMAIL, clicked, T0 + 12, T0 + 13, T0 + 14)  # streak 3 again, as base
    assert merge_histories(base, ours, hidden).ignored == 1  # its 3 exposures after its click are not seen


def test_day_rollover_keeps_both_sides_counts_of_the_days_kept() -> None:
    base = contacted(AD, None, T0, T0 + 1, action="a")  # day D: a=2
    ours = contacted(AD, base, T0 + 2, action="a")  # day D: a=3
    theirs = contacted(AD, base, T0 + DAY_S, action="b")  # rolled to D+1: b=1, day before a=2
    merged = merge_histories(base, ours, theirs)
    d = int(T0 // DAY_S)
    assert (merged.day, merged.per_action, merged.day_before) == (d + 1, {"b": 1}, {"a": 3})
    two_days = contacted(AD, base, T0 + 2 * DAY_S, action="b")  # D is forgotten: D+1 is empty
    merged = merge_histories(base, ours, two_days)
    assert (merged.day, merged.per_action, merged.day_before) == (d + 2, {"b": 1}, {})


def _events(rng: random.Random, start: float, n: int) -> list[tuple[str, float, str]]:
    out = []
    for _ in range(n):
        if rng.random() < 0.15:
            out.append(("click", 0.0, ""))
        else:  # within three days, some of them late
            out.append(("contact", start + rng.uniform(-0.5, 2.5) * DAY_S, rng.choice("abc")))
    return out


def _play(policy: ContactPolicy, h: ChannelHistory | None,
          events: list[tuple[str, float, str]]) -> ChannelHistory | None:
    for kind, ts, action in events:
        h = record_click(h) if kind == "click" else record_contact(policy, h, action, ts)
    return h


@pytest.mark.parametrize("policy", [AD, ContactPolicy(max_contacts=4, max_per_action_per_day=2), ContactPolicy()],
                         ids=["long-memory", "short-memory", "no-caps"])
def test_merge_matches_playing_both_sides_events_one_after_the_other(policy: ContactPolicy) -> None:
    """Property, fixed seed: the merge of two sides' histories holds what playing all their events on the
    base holds (contacts, counts of the days kept, last exposure), and a streak at least as long."""
    rng = random.Random(20261204)
    for _ in range(500):
        base = _play(policy, None, [e for e in _events(rng, T0, rng.randrange(0, 6)) if e[0] == "contact"])
        start = T0 + rng.uniform(0, 2) * DAY_S
        mine, other = _events(rng, start, rng.randrange(0, 5)), _events(rng, start, rng.randrange(0, 5))
        ours, theirs = _play(policy, base, mine), _play(policy, base, other)
        if ours is None or theirs is None:
            continue
        merged = merge_histories(base, ours, theirs)
        one, two = _play(policy, ours, other), _play(policy, theirs, mine)
        assert one is not None and two is not None
        kept = len(one.contacts)
        assert merged.contacts[len(merged.contacts) - kept:] == one.contacts
        assert sorted(merged.contacts) == merged.contacts
        assert len(merged.contacts) <= len(base.contacts if base else []) + len(ours.contacts) + len(theirs.contacts)
        assert (merged.day, merged.per_action, merged.day_before) == (one.day, one.per_action, one.day_before)
        assert merged.last_exposure == one.last_exposure
        clicks = [any(k == "click" for k, _, _ in side) for side in (mine, other)]
        b_ignored = base.ignored if base else 0
        hidden = [c and h.ignored >= b_ignored for c, h in zip(clicks, (ours, theirs), strict=True)]
        if not any(hidden):  # a click the history cannot show (policy/merge.py): see its own test
            assert merged.ignored >= max(one.ignored, two.ignored)
        if not any(clicks):
            assert merged.ignored == one.ignored == two.ignored
        assert merge_histories(base, theirs, ours) == merged  # symmetric
        # one side with no change: the other side whole
        base_state = UserPolicyState({}, {"c": base} if base else {})
        assert merge_states(base_state, base_state, UserPolicyState({}, {"c": theirs})).contacts["c"] == theirs
