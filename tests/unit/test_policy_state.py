"""The per-user policy state: round trip, size, and damaged input."""

from __future__ import annotations

import pytest

from cadence.settings import DEFAULT_CATALOGUE
from policy.catalogue import load_catalogue
from policy.contact import ChannelHistory, ContactPolicy, record_click, record_contact
from policy.state import PolicyStateError, UserPolicyState
from policy.stickiness import StickyState

T0 = 1_780_000_000.0


def busy_user() -> UserPolicyState:
    """A user at every cap of the default catalogue: the largest state it can produce."""
    cat = load_catalogue(DEFAULT_CATALOGUE)
    sticky = {}
    for pid, placement in cat.placements.items():
        longest = max((a for a in cat.actions if pid in cat.actions[a].placements), key=len)
        n = placement.stickiness.max_changes_per_day or 0
        sticky[pid] = StickyState(longest, T0, tuple(T0 - 7000 * i - 0.5 for i in range(n))[::-1])
    contacts = {
        channel: ChannelHistory(
            [T0 - 3600 * i for i in range(cat.contact_policy(channel).max_contacts or 0)],
            int(T0 // 86400),
            {a: 6 for a, x in cat.actions.items() if x.channel == channel}
            if cat.contact_policy(channel).max_per_action_per_day
            else {},
            17,
            T0,
        )
        for channel in ("web", "email", "ad")
    }
    return UserPolicyState(sticky, contacts)


def test_round_trip() -> None:
    state = busy_user()
    back = UserPolicyState.decode(state.encode())
    assert back.sticky.keys() == state.sticky.keys() and back.contacts.keys() == state.contacts.keys()
    for pid, s in state.sticky.items():
        b = back.sticky[pid]
        assert b.action == s.action and b.since == s.since
        assert all(0 <= y - x < 1 for x, y in zip(s.changes, b.changes, strict=True))  # rounded up
    assert back.contacts["ad"].per_action == state.contacts["ad"].per_action


def test_a_busy_user_fits_the_budget() -> None:
    raw = busy_user().encode()
    print(f"busy user policy state: {len(raw)} bytes")
    assert len(raw) < 1024


def test_none_is_a_new_user_and_copies_are_independent() -> None:
    assert UserPolicyState.decode(None) == UserPolicyState()
    state = busy_user()
    before = state.encode()
    copy = state.copy()
    # what the policy does to a copy: replace a channel's history (record_contact returns a new one),
    # replace or drop a placement's sticky state
    copy.contacts["email"] = record_contact(ContactPolicy(max_contacts=5), copy.contacts["email"], "e", T0 + 1)
    copy.contacts["ad"] = record_click(copy.contacts["ad"]) or ChannelHistory()
    copy.sticky.pop("home_hero")
    assert state.encode() == before and copy.encode() != before
    assert T0 + 1 in copy.contacts["email"].contacts and T0 + 1 not in state.contacts["email"].contacts


def test_a_click_resets_the_channels_ignored_streak() -> None:
    state = busy_user()
    after = state.after_click("email")
    assert after.contacts["email"].ignored == 0 and after.contacts["ad"].ignored == 17
    assert state.contacts["email"].ignored == 17
    assert UserPolicyState().after_click("email") == UserPolicyState()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "cannot be read"),
        (b"[]", "cannot be read"),
        (b'{"v": 2, "s": {}, "c": {}}', "version 2, expected 1"),
        (b'{"v": 1, "s": {"p": ["a"]}, "c": {}}', "cannot be read"),
        (b'{"v": 1, "s": {"p": [1, 2, []]}, "c": {}}', "is not \\[action, since, \\[ages\\]\\]"),
        (b'{"v": 1, "s": {}, "c": {"email": [[], 0, [], 0, 0]}}', "is not \\[contacts, day"),
        (b'{"v": 1, "s": {}}', "cannot be read"),
    ],
)
def test_damaged_state_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(PolicyStateError, match=message):
        UserPolicyState.decode(raw)
