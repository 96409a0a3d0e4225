"""The per-user policy state: round trip, size, both wire versions, and damaged input."""

from __future__ import annotations

from dataclasses import fields
from math import ceil

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cadence.settings import DEFAULT_CATALOGUE
from policy.catalogue import load_catalogue
from policy.contact import ChannelHistory, ContactPolicy, action_capped, record_click, record_contact
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
            {a: 6 for a, x in cat.actions.items() if x.channel == channel}
            if cat.contact_policy(channel).max_per_action_per_day
            else {},
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
    assert back.contacts["ad"].day_before == state.contacts["ad"].day_before != {}


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


# Stored by the engine before version 2 (the JSON form).
V1 = (b'{"v":1,"s":{"home_hero":["offer_free_shipping",1767607494,[]],"product_sidebar":["offer_free_shipping",'
      b'1767615882,[]],"display_slot":["creative_lifestyle",1767621663,[3600]],"newsletter":["email_new_arrivals",'
      b'1767627300,[]]},"c":{"web":[[],0,{},3,1767615882],"ad":[[],20458,{"creative_lifestyle":1},1,1767621663],'
      b'"email":[[1767627300],0,{},1,1767627300]}}')


def v1(state: UserPolicyState) -> bytes:
    """The JSON form (version 1) of a state, as it was written before version 2."""
    return orjson.dumps({"v": 1, "s": {p: s.to_wire() for p, s in state.sticky.items()},
                         "c": {c: h.to_wire() for c, h in state.contacts.items()}})


def test_a_state_stored_as_version_1_still_reads() -> None:
    state = UserPolicyState.decode(V1)
    assert state.sticky["display_slot"] == StickyState("creative_lifestyle", 1767621663.0, (1767618063.0,))
    assert state.contacts["ad"] == ChannelHistory([], 20458, {"creative_lifestyle": 1}, 1, 1767621663.0)
    assert state.contacts["email"].contacts == [1767627300.0]
    assert UserPolicyState.decode(state.encode()) == state  # written again as version 2, read alike


def test_version_2_is_written_and_reads_as_version_1_did() -> None:
    state = UserPolicyState.decode(V1)
    raw = state.encode()
    print(f"a typical state: version 2 {len(raw)} bytes, version 1 {len(V1)}: {raw.decode()}")
    assert not raw.startswith(b"{") and len(raw) < 0.7 * len(V1)
    busy = busy_user()
    assert UserPolicyState.decode(busy.encode()) == UserPolicyState.decode(v1(busy))
    assert len(busy.encode()) < len(v1(busy))


times = st.floats(T0 - 5 * 86400, T0 + 5 * 86400)
names = st.sampled_from(["home_hero", "a", "", "offer-10%", "ünï", "a,b", "x|y", "p=q", "k:v", "d.e", "s;t"])
sticky_states = st.builds(StickyState, names, times, st.lists(times, max_size=3).map(lambda ts: tuple(sorted(ts))))
counts = st.dictionaries(names, st.integers(0, 9), max_size=3)
histories = st.builds(ChannelHistory, st.lists(times, max_size=4).map(sorted), st.sampled_from([0, 20573, 20570]),
                      counts, st.integers(0, 30), times, counts)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, sticky_states, max_size=5), st.dictionaries(names, histories, max_size=4))
def test_any_state_reads_back_as_its_version_1_form_does(sticky: dict, contacts: dict) -> None:
    state = UserPolicyState(sticky, contacts)
    raw = state.encode()
    assert UserPolicyState.decode(raw) == UserPolicyState.decode(v1(state))
    # a name holding one of the separators is written in version 1, any other state in version 2
    separated = any(c in name for name in [*sticky, *contacts, *(s.action for s in sticky.values()),
                                           *(a for h in contacts.values() for a in [*h.per_action, *h.day_before])]
                    for c in "|;=,.:")
    assert raw.startswith(b"{") == separated


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"123|p=a", "not enough values to unpack"),
        (b"x|p=a,0|", "invalid literal"),
        (b"123|p=a|", "not enough values to unpack"),
        (b"123||c=,0,,1", "not enough values to unpack"),
        (b"123||c=,0,a,1,0", "invalid literal"),
        (b"123||c=,0,,1,0,a:1,b:2", "7 fields"),
        (b"123||c=,0,,1,0,a:x", "invalid literal"),
        (b"123|\xff=a,0|", "codec can't decode"),
    ],
)
def test_a_damaged_version_2_state_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(PolicyStateError, match=message):
        UserPolicyState.decode(raw)


def rounded(state: UserPolicyState) -> UserPolicyState:
    """``state`` with its times rounded up to whole seconds, as both stored forms round them."""
    return UserPolicyState(
        {p: StickyState(s.action, float(ceil(s.since)), tuple(float(ceil(t)) for t in s.changes))
         for p, s in state.sticky.items()},
        {c: ChannelHistory([float(ceil(t)) for t in h.contacts], h.day, dict(h.per_action), h.ignored,
                           float(ceil(h.last_exposure)), dict(h.day_before)) for c, h in state.contacts.items()},
    )


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, sticky_states, max_size=5), st.dictionaries(names, histories, max_size=4))
def test_every_field_survives_both_forms(sticky: dict, contacts: dict) -> None:
    """Each dataclass field of every sticky state and channel history (day_before included) reads back as it
    was, times rounded up to whole seconds, from the form written (version 2, or 1 for separators) and from
    version 1."""
    state = UserPolicyState(sticky, contacts)
    want = rounded(state)
    for raw in (state.encode(), v1(state)):
        back = UserPolicyState.decode(raw)
        assert back.sticky.keys() == want.sticky.keys() and back.contacts.keys() == want.contacts.keys()
        for key, obj in [*((("s", p), s) for p, s in want.sticky.items()),
                         *((("c", c), h) for c, h in want.contacts.items())]:
            got = back.sticky[key[1]] if key[0] == "s" else back.contacts[key[1]]
            for f in fields(obj):
                assert getattr(got, f.name) == getattr(obj, f.name), (raw, key, f.name)


# Written by version 2 before the day before's counts were stored (five fields per channel).
V2_OLD = b"1767225600|home_hero=offer_10pct,0,5399|email=0,,,1,0;ad=,0,creative_a:2,3,-7200"


def test_a_version_2_state_without_the_day_before_still_reads() -> None:
    state = UserPolicyState.decode(V2_OLD)
    assert state == UserPolicyState(
        {"home_hero": StickyState("offer_10pct", 1767225600.0, (1767220201.0,))},
        {"email": ChannelHistory([1767225600.0], 0, {}, 1, 1767225600.0),
         "ad": ChannelHistory([], 20454, {"creative_a": 2}, 3, 1767232800.0)},
    )
    assert state.encode() == V2_OLD  # no day before: written as before, no sixth field


def test_the_day_before_is_written_only_when_there_is_one() -> None:
    state = UserPolicyState.decode(V2_OLD)
    state.contacts["ad"].day_before = {"creative_a": 6, "creative_b": 1}
    raw = state.encode()
    assert raw == V2_OLD + b",creative_a:6.creative_b:1"  # a sixth field on the last channel, "ad"
    assert UserPolicyState.decode(raw) == state


def test_a_late_request_stays_capped_after_the_state_is_stored() -> None:
    """Six impressions of X late on day D, then one on D+1: a late request of day D is still at X's daily cap
    once the state has been stored and read again (a restart or a cache miss)."""
    day, d = 86400.0, 1_780_012_800.0  # a UTC midnight
    policy = ContactPolicy(max_per_action_per_day=6)
    h = None
    for i in range(6):
        h = record_contact(policy, h, "X", d + 23 * 3600 + 60 * i)
    h = record_contact(policy, h, "X", d + day + 600)
    late = d + 23 * 3600 + 1800
    assert action_capped(policy, h, "X", late) and h.day_before == {"X": 6}
    state = UserPolicyState(contacts={"ad": h})
    for raw in (state.encode(), v1(state)):
        back = UserPolicyState.decode(raw).contacts["ad"]
        assert back.day_before == {"X": 6} and back == h
        assert action_capped(policy, back, "X", late)
        assert not action_capped(policy, back, "Y", late)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=30 * 86400.0, allow_nan=False), min_size=1, max_size=12),
       st.sampled_from(["home_hero", "newsletter"]))
def test_a_state_just_decided_is_the_state_read_back(offsets: list[float], placement: str) -> None:
    """Decisions at fractional times: the state a worker keeps (its decoded-state cache holds the object it
    encoded) must be the one a restarted worker, or a replay, reads back. The stored form rounds times up to
    the second; the in-memory one kept the fractions, so two workers could judge the same next request
    differently, by up to a second at a dwell, cap or window edge (and a redelivered no-consent request was
    re-emitted by one worker and decided again by another)."""
    from policy.pipeline import PolicyContext, PolicyRequest, decide_action

    ctx = PolicyContext(load_catalogue(DEFAULT_CATALOGUE))
    state = UserPolicyState()
    for k, offset in enumerate(sorted(offsets)):
        request = PolicyRequest("u1", placement, 1_767_571_200.0 + offset, None, True, {})
        outcome = decide_action(request, state, ctx, lambda eligible: _first_choice(eligible))
        state = outcome.state
        assert UserPolicyState.decode(state.encode()) == state, f"after decision {k}"


def _first_choice(eligible):  # noqa: ANN001, ANN202
    from bandits.base import Choice

    actions = list(eligible)
    return Choice.from_maps(actions[0], 1.0, actions[0], {a: 1.0 - i / 10 for i, a in enumerate(actions)},
                  {a: float(i == 0) for i, a in enumerate(actions)})
