"""PolicyStates: decoded policy states by stored text, bounded in two generations."""

from __future__ import annotations

import pytest

from engine.decide import POLICY_STATE_FIELD, PolicyStates
from features.state import UserState
from policy.state import UserPolicyState
from policy.stickiness import StickyState

CAPACITY = 10


def state(i: int) -> UserPolicyState:
    """A distinct policy state per ``i`` (distinct stored text)."""
    return UserPolicyState({"home_hero": StickyState("offer_10pct", 1_767_571_200.0 + i)})


def stored(text: str) -> UserState:
    return UserState("u", {POLICY_STATE_FIELD: text})


def test_a_state_stored_in_the_last_half_capacity_decisions_is_found_without_decoding():
    cache = PolicyStates(CAPACITY)
    first = state(0)
    text = cache.encode(first)
    for i in range(1, CAPACITY // 2 + 1):  # up to a full newer generation after it: it is in the older one
        cache.encode(state(i))
        assert cache.of(stored(text)) is first, i
        assert len(cache) <= CAPACITY


def test_an_old_state_is_dropped_then_decoded_again_with_the_same_content():
    cache = PolicyStates(CAPACITY)
    first = state(0)
    text = cache.encode(first)
    for i in range(1, CAPACITY + 1):
        cache.encode(state(i))
    again = cache.of(stored(text))
    assert again is not first and again == first  # decoded from the text: equal, not the cached object
    assert len(cache) <= CAPACITY


def test_the_cache_never_holds_more_than_its_capacity_and_never_empties_at_once():
    cache = PolicyStates(CAPACITY)
    sizes = []
    for i in range(5 * CAPACITY):
        cache.encode(state(i))
        sizes.append(len(cache))
    assert max(sizes) == CAPACITY
    assert min(sizes[CAPACITY:]) >= CAPACITY // 2  # once warm, at least a generation is always there


def test_users_without_a_stored_state_get_a_fresh_one_and_a_bad_capacity_is_refused():
    cache = PolicyStates(CAPACITY)
    assert cache.of(None) == UserPolicyState()
    assert cache.of(UserState("u", {})) == UserPolicyState()
    with pytest.raises(ValueError, match="at least 2"):
        PolicyStates(1)
