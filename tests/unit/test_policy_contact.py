"""Contact policies: quiet hours, channel caps, per-action daily caps, suppression after ignored exposures."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.contact import (
    DAY_S,
    ChannelHistory,
    ContactCap,
    ContactPolicy,
    action_capped,
    channel_block,
    record_click,
    record_contact,
)

MIDNIGHT = 1_780_012_800.0  # a UTC midnight
assert MIDNIGHT % DAY_S == 0
H = 3600.0


def at_hour(hour: float, day: int = 0) -> float:
    return MIDNIGHT + day * DAY_S + hour * H


@pytest.mark.parametrize(
    ("hours", "hour", "quiet"),
    [
        ((21, 7), 21, True),
        ((21, 7), 23.9, True),
        ((21, 7), 0, True),
        ((21, 7), 6.99, True),
        ((21, 7), 7, False),
        ((21, 7), 20.99, False),
        ((9, 17), 9, True),
        ((9, 17), 16.5, True),
        ((9, 17), 17, False),
        ((9, 17), 8, False),
        (None, 3, False),
    ],
)
def test_quiet_hours_in_utc(hours: tuple[int, int] | None, hour: float, quiet: bool) -> None:
    policy = ContactPolicy(quiet_hours_utc=hours)
    assert policy.is_quiet(at_hour(hour)) is quiet
    assert (channel_block(policy, None, at_hour(hour)) is ContactCap.QUIET_HOURS) is quiet


def history_with(policy: ContactPolicy, times: list[float], action: str = "x") -> ChannelHistory | None:
    h = None
    for t in times:
        h = record_contact(policy, h, action, t)
    return h


TWO_PER_WEEK = ContactPolicy(max_contacts=2, window_days=7)
IGNORE_3 = ContactPolicy(suppress_after_ignored=3, suppress_days=14)


@pytest.mark.parametrize(
    ("case", "policy", "times", "now", "cap"),
    [
        ("first contact", TWO_PER_WEEK, [], at_hour(12), None),
        ("one in the week", TWO_PER_WEEK, [at_hour(12)], at_hour(13), None),
        (
            "two in the week",
            TWO_PER_WEEK,
            [at_hour(12), at_hour(12, 3)],
            at_hour(12, 5),
            ContactCap.CHANNEL_CAP,
        ),
        ("oldest left the window", TWO_PER_WEEK, [at_hour(12), at_hour(12, 3)], at_hour(12, 7), None),
        (
            "late request sees later contacts",
            TWO_PER_WEEK,
            [at_hour(12, 3), at_hour(12, 4)],
            at_hour(12, 1),
            ContactCap.CHANNEL_CAP,
        ),
        (
            "late request older than the remembered contacts: the dropped ones may be in its window",
            TWO_PER_WEEK,
            [at_hour(0), at_hour(0, 6), at_hour(0, 8)],  # the first is no longer remembered
            at_hour(12, 0),
            ContactCap.CHANNEL_CAP,
        ),
        (
            "late request after the oldest remembered contact: the dropped ones may be in its window",
            TWO_PER_WEEK,
            [at_hour(8), at_hour(10), at_hour(12, 20)],  # 8:00 is dropped; only 10:00 is in the window
            at_hour(11),
            ContactCap.CHANNEL_CAP,
        ),
        (
            "late request a window after the oldest remembered contact: the dropped ones are outside it",
            TWO_PER_WEEK,
            [at_hour(8), at_hour(10), at_hour(12, 20)],
            at_hour(10, 7),
            None,
        ),
        ("late request while the memory is not full", TWO_PER_WEEK, [at_hour(12, 9)], at_hour(12, 1), None),
        ("max_contacts 0: no first contact", ContactPolicy(max_contacts=0), [], at_hour(12), ContactCap.CHANNEL_CAP),
        ("two ignored", IGNORE_3, [at_hour(1), at_hour(2)], at_hour(3), None),
        (
            "three ignored: pause",
            IGNORE_3,
            [at_hour(1), at_hour(2), at_hour(3)],
            at_hour(4),
            ContactCap.IGNORED_EXPOSURES,
        ),
        (
            "pause ends 14 days after the last",
            IGNORE_3,
            [at_hour(1), at_hour(2), at_hour(3)],
            at_hour(3, 14),
            None,
        ),
        (
            "pause still on",
            IGNORE_3,
            [at_hour(1), at_hour(2), at_hour(3)],
            at_hour(2.9, 14),
            ContactCap.IGNORED_EXPOSURES,
        ),
        (
            "the probe after a pause starts a new pause",
            IGNORE_3,
            [at_hour(1), at_hour(2), at_hour(3), at_hour(3, 14)],
            at_hour(4, 14),
            ContactCap.IGNORED_EXPOSURES,
        ),
    ],
)
def test_channel_block(case, policy, times, now, cap) -> None:
    assert channel_block(policy, history_with(policy, times), now) is cap


def wire_round_trip(h: ChannelHistory) -> ChannelHistory:
    return ChannelHistory.from_wire(orjson.loads(orjson.dumps(h.to_wire())))


@settings(max_examples=400, deadline=None)
@given(
    st.integers(1, 4),
    st.sampled_from([1.0, 7.0]),
    st.lists(st.integers(0, 40 * 24), min_size=1, max_size=40),  # request hours, in any order (late ones)
)
def test_no_request_order_passes_the_channel_cap(max_contacts: int, window_days: float, hours: list[int]) -> None:
    # Whatever order requests come in, no rolling window holds more than max_contacts contacts, though the
    # history keeps only the newest max_contacts of them (stored and read back, as the engine does).
    policy = ContactPolicy(max_contacts=max_contacts, window_days=window_days)
    window = window_days * DAY_S
    h: ChannelHistory | None = None
    shown: list[float] = []
    for hour in hours:
        ts = MIDNIGHT + hour * H
        if channel_block(policy, h, ts) is None:
            h = wire_round_trip(record_contact(policy, h, "x", ts))
            shown.append(ts)
    for start in shown:
        assert sum(1 for t in shown if start <= t < start + window) <= max_contacts


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(st.integers(0, 40 * 24), min_size=1, max_size=30),
    st.integers(0, 10 * 24),
)
def test_in_order_requests_are_refused_only_by_the_count(max_contacts: int, hours: list[int], after: int) -> None:
    # A request at or after every remembered contact is refused exactly when max_contacts remembered
    # contacts are in its window: the refusal for contacts the history forgot changes nothing in order.
    policy = ContactPolicy(max_contacts=max_contacts, window_days=7)
    h = history_with(policy, [MIDNIGHT + hour * H for hour in sorted(hours)])
    assert h is not None
    ts = h.contacts[-1] + after * H
    counted = sum(1 for t in h.contacts if abs(ts - t) < 7 * DAY_S) >= max_contacts
    assert (channel_block(policy, h, ts) is ContactCap.CHANNEL_CAP) is counted


def test_a_click_ends_the_ignored_streak() -> None:
    h = history_with(IGNORE_3, [at_hour(1), at_hour(2), at_hour(3)])
    assert channel_block(IGNORE_3, h, at_hour(4)) is ContactCap.IGNORED_EXPOSURES
    clicked = record_click(h)
    assert clicked is not None and clicked.ignored == 0
    assert channel_block(IGNORE_3, clicked, at_hour(4)) is None
    assert h is not None and h.ignored == 3  # the input is unchanged
    assert record_click(None) is None


def test_quiet_hours_come_first() -> None:
    policy = ContactPolicy(max_contacts=1, quiet_hours_utc=(22, 6))
    h = history_with(policy, [at_hour(12)])
    assert channel_block(policy, h, at_hour(23)) is ContactCap.QUIET_HOURS
    assert channel_block(policy, h, at_hour(13)) is ContactCap.CHANNEL_CAP


def test_per_action_daily_cap_counts_each_action_per_utc_day() -> None:
    policy = ContactPolicy(max_per_action_per_day=2)
    h = history_with(policy, [at_hour(1), at_hour(2)], "creative_a")
    h = record_contact(policy, h, "creative_b", at_hour(3))
    assert action_capped(policy, h, "creative_a", at_hour(23.9))
    assert not action_capped(policy, h, "creative_b", at_hour(4))
    assert not action_capped(policy, h, "creative_a", at_hour(0, 1))  # next UTC day
    h2 = record_contact(policy, h, "creative_a", at_hour(0.5, 1))
    assert h2.day == int(at_hour(0.5, 1) // DAY_S) and h2.per_action == {"creative_a": 1}
    assert not action_capped(ContactPolicy(), h, "creative_a", at_hour(4))
    assert action_capped(ContactPolicy(max_per_action_per_day=0), None, "creative_a", at_hour(4))


def test_per_action_daily_cap_holds_for_late_requests_across_midnight() -> None:
    # Two impressions at 23:00 on day 0, then a request on day 1: requests of day 0 read late must still
    # see day 0's two (they used to see a day that was not the history's and count as uncapped, unrecorded).
    policy = ContactPolicy(max_per_action_per_day=2)
    h = history_with(policy, [at_hour(23), at_hour(23.1), at_hour(9, 1)], "creative_a")
    assert h is not None and h.day_before == {"creative_a": 2} and h.per_action == {"creative_a": 1}
    assert action_capped(policy, h, "creative_a", at_hour(23.5))
    assert not action_capped(policy, h, "creative_b", at_hour(23.5))
    h2 = record_contact(policy, h, "creative_b", at_hour(23.6))  # a late contact counts on its own day
    assert h2.day_before == {"creative_a": 2, "creative_b": 1} and h2.per_action == {"creative_a": 1}
    assert action_capped(policy, h2, "creative_a", at_hour(12, -1))  # two days back: forgotten, refused
    assert not action_capped(policy, h2, "creative_a", at_hour(10, 1))  # day 1 has room for one more
    gap = record_contact(policy, h2, "creative_a", at_hour(8, 3))  # day 3 follows day 1: day 2 was empty
    assert gap.day_before == {} and gap.per_action == {"creative_a": 1}


def test_history_keeps_only_what_the_rules_need() -> None:
    policy = ContactPolicy(max_contacts=2)
    h = history_with(policy, [at_hour(h) for h in range(1, 6)])
    assert h is not None
    assert h.contacts == [at_hour(4), at_hour(5)] and h.per_action == {} and h.ignored == 5
    assert history_with(ContactPolicy(), [at_hour(1)]).contacts == []  # type: ignore[union-attr]


def test_wire_round_trip_rounds_up() -> None:
    h = ChannelHistory([at_hour(1) + 0.2], 20603, {"c": 2}, 4, at_hour(1) + 0.2)
    back = ChannelHistory.from_wire(orjson.loads(orjson.dumps(h.to_wire())))
    assert back.contacts == [at_hour(1) + 1] and back.last_exposure == at_hour(1) + 1
    assert (back.day, back.per_action, back.ignored) == (20603, {"c": 2}, 4)
    with pytest.raises(ValueError, match="is not \\[contacts, day, per_action, ignored, last\\(, before\\)\\]"):
        ChannelHistory.from_wire([[], "day", {}, 0, 0])
    h.day_before = {"c": 1, "d": 3}  # the day before's counts travel as a sixth element
    assert ChannelHistory.from_wire(orjson.loads(orjson.dumps(h.to_wire()))).day_before == {"c": 1, "d": 3}
    assert len(ChannelHistory([], 1, {}, 0, 0.0).to_wire()) == 5  # older states read as they are


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_contacts": -1}, "max_contacts must be an integer >= 0"),
        ({"window_days": 0}, "window_days must be a number > 0"),
        ({"suppress_days": float("inf")}, "suppress_days must be a number > 0"),
        ({"quiet_hours_utc": (5, 5)}, "quiet_hours_utc must be"),
        ({"quiet_hours_utc": (5, 24)}, "quiet_hours_utc must be"),
    ],
)
def test_bad_policy(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContactPolicy(**kwargs)
