"""EventClock: which timestamps a worker believes, batch by batch (pure, event time only)."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.events import Event, Reason
from engine.event_clock import ClockLimits, EventClock

T0 = 1_767_571_200.0  # 2026-01-05 00:00 UTC
HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0
LIMITS = ClockLimits()


def ev(ts: float, user: str = "u1", event_id: str = "e") -> Event:
    return Event(event_id=event_id, user_id=user, ts=ts, type="page_view", topic="web-events", channel="web")


def good(n: int, ts: float, tag: str = "g", step_s: float = 1.0) -> list[Event]:
    return [ev(ts + i * step_s, user=f"{tag}{i}", event_id=f"{tag}-e{i}") for i in range(n)]


def accepted(clock: EventClock, batch: list[Event], limits: ClockLimits = LIMITS) -> list[bool]:
    return [v is None for v in clock.judge(batch, limits)]


def started(ts: float = T0) -> EventClock:
    """A clock that has seen a busy stream: 200 users, one event a second (more than its pace window)."""
    clock = EventClock()
    assert all(accepted(clock, good(200, ts)))
    assert clock.watermark == ts + 199
    return clock


def test_the_first_batch_sets_event_time_and_the_watermark_follows_accepted_events() -> None:
    clock = EventClock()
    assert clock.watermark == 0.0
    assert all(accepted(clock, good(50, T0)))
    assert clock.watermark == T0 + 49


def test_verdicts_name_the_limit_that_was_crossed() -> None:
    clock = started()
    early, ahead, wild = clock.judge([ev(T0 - 40 * DAY), ev(T0 + 3 * HOUR), ev(T0 + YEAR)], LIMITS)
    assert early is not None and early.reason is Reason.TS_OUT_OF_RANGE and "behind" in early.detail
    assert ahead is not None and "ahead of the stream's event time" in ahead.detail
    assert wild is not None and "check the sender's clock" in wild.detail


@pytest.mark.parametrize("ahead_s", [2 * HOUR, 3 * DAY, 6.9 * DAY])
def test_a_small_batch_made_mostly_of_wrong_clocks_does_not_move_event_time(ahead_s: float) -> None:
    """The property-test failure: a broker fetch can hand over two bad events and one good one; the batch
    median was then a wrong clock, trusted up to the jump limit, and the bad events were accepted."""
    clock = started()
    watermark = clock.watermark
    batch = [ev(T0 + ahead_s, "bad1"), ev(T0 + 210, "ok1"), ev(T0 + ahead_s, "bad2")]
    assert accepted(clock, batch) == [False, True, False]
    assert clock.watermark == watermark + 11  # the good event, nothing else
    assert accepted(clock, [ev(T0 + ahead_s, "bad3")]) == [False]  # alone in its batch: refused too


def test_a_batch_whose_median_is_years_ahead_does_not_let_a_nearer_wrong_clock_in() -> None:
    clock = started()
    batch = [ev(T0 + YEAR + i, f"far{i}") for i in range(5)] + [ev(T0 + 2 * DAY, "near"), ev(T0 + 10, "ok")]
    assert accepted(clock, batch) == [False] * 5 + [False, True]


def test_one_client_bursting_cannot_outvote_the_others_in_the_first_batch() -> None:
    clock = EventClock()
    burst = [ev(T0 + 2 * DAY + i, "wrong-clock", f"w{i}") for i in range(100)]
    verdicts = accepted(clock, burst + good(10, T0))
    assert verdicts == [False] * 100 + [True] * 10
    assert clock.watermark == T0 + 9


def test_a_stream_that_paused_and_came_back_is_followed_in_one_batch() -> None:
    clock = started()
    back = good(40, T0 + 2 * DAY, tag="m") + [ev(T0 + 30, "straggler")]  # a few late events are normal
    assert all(accepted(clock, back))
    assert clock.watermark == T0 + 2 * DAY + 39


def test_thin_traffic_after_a_pause_is_followed_after_a_short_run() -> None:
    clock = started()
    limits = ClockLimits(advance_events=20, advance_min_users=10)
    later = [ev(T0 + 5 * HOUR + i * 10, f"m{i % 12}", f"m{i}") for i in range(30)]
    verdicts = [accepted(clock, [e], limits)[0] for e in later]  # one event per batch
    assert verdicts == [False] * 20 + [True] * 10
    assert T0 + 5 * HOUR < clock.watermark <= T0 + 5 * HOUR + 300


def test_events_of_the_old_time_in_between_keep_the_wrong_clocks_out() -> None:
    """Wrong clocks mixed with a stream that did not move: the run never grows, nothing ahead gets in."""
    clock = started()
    rng = np.random.default_rng(7)
    refused_ahead = 0
    for i in range(2000):
        if rng.random() < 0.3:  # 30 % wrong clocks, two hours ahead, many users, one per batch
            refused_ahead += not accepted(clock, [ev(T0 + 2 * HOUR + i, f"bad{i % 50}")])[0]
        else:
            assert accepted(clock, [ev(T0 + 50 + i * 0.5, f"ok{i % 300}")]) == [True]
    assert refused_ahead > 500
    assert clock.watermark < T0 + 50 + 2000 * 0.5


def test_a_far_jump_needs_many_agreeing_users_in_a_row() -> None:
    limits = ClockLimits(resync_events=50, resync_min_users=40)
    clock = started()
    scattered = [ev(T0 + YEAR * (1 + i / 10), f"s{i}") for i in range(50)]  # wrong clocks, each its own way
    assert not any(accepted(clock, scattered, limits))
    few_users = [ev(T0 + YEAR + i, f"f{i % 5}") for i in range(50)]  # agreeing, but five clients
    assert not any(accepted(clock, few_users, limits))
    assert clock.watermark == T0 + 199
    jump = [ev(T0 + YEAR + 100 + i, f"j{i}") for i in range(60)]
    assert accepted(clock, jump, limits) == [False] * 50 + [True] * 10
    assert clock.watermark >= T0 + YEAR


def test_judging_nothing_changes_nothing() -> None:
    clock = started()
    assert clock.judge([], LIMITS) == []
    assert clock.watermark == T0 + 199


def test_a_quiet_stream_may_step_hours_ahead_one_event_at_a_time() -> None:
    """One customer every quarter of an hour or so, now and then a two-hour lull: its pace allows that."""
    clock = EventClock()
    rng = np.random.default_rng(3)
    gaps = rng.exponential(900.0, size=300)
    gaps[100::40] = 2 * HOUR  # lulls, after the pace window has filled
    times = T0 + np.cumsum(gaps)
    assert all(accepted(clock, [ev(float(t), event_id=f"q{i}")])[0] for i, t in enumerate(times))
    assert clock.watermark == float(times[-1])


def test_a_fresh_clock_follows_a_lone_event_up_to_the_jump_limit() -> None:
    """Too little history to know the stream's pace: only the skew around the batch and the jump limit hold."""
    clock = EventClock()
    assert accepted(clock, [ev(T0)]) == [True]
    assert accepted(clock, [ev(T0 + 3 * DAY)]) == [True]
    assert accepted(clock, [ev(T0 + 11 * DAY)]) == [False]
    assert clock.watermark == T0 + 3 * DAY


def test_a_batch_of_one_good_event_and_one_wrong_clock_does_not_meet_half_way() -> None:
    """The mean of the two middle votes was the batch's time: a wrong clock two hours ahead got within the skew."""
    clock = started()
    assert accepted(clock, [ev(T0 + 199 + 2 * HOUR, "bad"), ev(T0 + 200, "ok")]) == [False, True]
    assert clock.watermark == T0 + 200


def test_one_step_ahead_does_not_widen_what_is_believed_next() -> None:
    """A busy stream that paused two days and came back (many users agree) is followed; a lone clock a day
    ahead of that is still a wrong clock: the pace is the median step, not the span of the recent events."""
    clock = started()
    assert all(accepted(clock, good(40, T0 + 2 * DAY, tag="m")))
    assert accepted(clock, [ev(T0 + 3 * DAY, "wrong")]) == [False]
    assert accepted(clock, [ev(T0 + 2 * DAY + 50, "ok")]) == [True]


def test_a_first_batch_with_many_scattered_wrong_clocks_takes_the_time_most_users_agree_on() -> None:
    """No watermark yet: the median vote would be a wrong clock (30 of 50 users, each its own way), event
    time would start years ahead and every good event after would be refused as late, for good."""
    clock = EventClock()
    wrong = [ev(T0 + YEAR * (1 + i / 10), f"w{i}") for i in range(30)]
    first = accepted(clock, wrong + good(20, T0))
    assert first == [False] * 30 + [True] * 20
    assert clock.watermark == T0 + 19
    assert all(accepted(clock, good(10, T0 + 60, tag="later")))


def test_one_client_cannot_walk_event_time_ahead_event_by_event() -> None:
    """Each event used to be judged against the watermark the previous one had just moved: one client whose
    clock ran 3,000 s further with every event walked event time 33 hours ahead in one batch."""
    clock = started()
    before = clock.watermark
    batch = good(5, before + 1, tag="ok") + [ev(before + 3000 * (k + 1), "wrong", f"w{k}") for k in range(40)]
    verdicts = accepted(clock, batch)
    assert verdicts[:5] == [True] * 5
    assert sum(verdicts[5:]) == 1  # its first event is within the skew; the next ones are not
    assert clock.watermark - before <= LIMITS.max_future_skew_s
    for k in range(5):  # nor batch after batch, each of its events just under the skew beyond the watermark
        verdicts = accepted(clock, [ev(clock.watermark + 3000, "wrong", f"x{k}")] + good(3, before + 10 + k, f"n{k}"))
        assert verdicts == [False, True, True, True]
    assert clock.watermark - before <= LIMITS.max_future_skew_s


def test_a_backlog_batch_spanning_hours_is_followed_in_order() -> None:
    """What the running reference is for: a worker catching up reads hours of many users' events in one batch."""
    clock = started()
    backlog = [ev(T0 + 200 + i * 20.0, f"b{i % 50}", f"b{i}") for i in range(1000)]  # 5.5 hours, 50 users
    assert all(accepted(clock, backlog))
    assert clock.watermark == T0 + 200 + 999 * 20.0


@pytest.mark.parametrize("off_s", [YEAR, -2 * YEAR])
def test_a_lone_first_event_with_a_wrong_clock_does_not_fix_event_time(off_s: float) -> None:
    """The reviewer's repro: a fresh worker's first batch held one event a year ahead (a GET /decide without
    ts, on the wall clock) or two years behind (one bad device clock); it set event time, and every good event
    of 50 users after it was refused, for good. One user's vote does not anchor the clock."""
    clock = EventClock()
    assert accepted(clock, [ev(T0 + off_s, "bad")]) == [True]
    assert all(accepted(clock, good(50, T0)))
    assert T0 <= clock.watermark <= T0 + 49
    assert accepted(clock, [ev(T0 + off_s, "bad")]) == [False]  # event time is now the users', not its


def test_a_lone_wrong_first_event_yields_to_thin_traffic_of_a_few_users() -> None:
    """One good event per batch: once more users agree than back the clock (and at least three), they win."""
    clock = EventClock()
    assert accepted(clock, [ev(T0 + YEAR, "bad")]) == [True]
    verdicts = [accepted(clock, [ev(T0 + i * 10, f"m{i % 12}", f"m{i}")])[0] for i in range(30)]
    assert verdicts[:2] == [False, False] and all(verdicts[3:])
    assert T0 <= clock.watermark <= T0 + 300


def test_few_users_cannot_take_event_time_from_the_users_that_set_it() -> None:
    """Until ``advance_min_users`` users back it the clock yields only to a larger group, never to fewer."""
    clock = EventClock()
    assert all(accepted(clock, good(5, T0)))
    assert not any(accepted(clock, good(4, T0 + YEAR, tag="w")))  # four wrong clocks agreeing: fewer than five
    assert not any(accepted(clock, good(5, T0 - YEAR, tag="x")))  # as many: not more
    assert clock.watermark == T0 + 4


def test_a_backfill_of_old_data_in_one_burst_does_not_move_event_time_back() -> None:
    """2,000 events of 300 users dated 40 days back (beyond the lateness), in one burst with no live event in
    between: a backwards resync tried during this session moved event time back 40 days, and the live stream
    after it was refused. They are refused; the live stream goes on."""
    clock = started()
    for i in range(200):
        accepted(clock, [ev(T0 + i, f"live{i % 50}", f"l{i}")])
    burst = [ev(T0 - 40 * DAY + i, f"old{i % 300}", f"o{i}") for i in range(2000)]
    assert not any(accepted(clock, burst[:1000]) + accepted(clock, burst[1000:]))
    assert all(accepted(clock, [ev(T0 + 300 + i, f"live{i % 50}", f"m{i}") for i in range(50)]))


def test_a_live_stream_keeps_an_old_backlog_from_moving_event_time_back() -> None:
    """A partition two months behind (beyond the lateness) among a live stream: it is refused, and the live
    stream's many users keep breaking its run, so event time never goes back."""
    limits = ClockLimits(resync_events=50, resync_min_users=40)
    clock = started()
    for i in range(300):
        assert accepted(clock, [ev(T0 - 60 * DAY + i, f"old{i % 100}", f"o{i}")], limits) == [False]
        assert accepted(clock, [ev(T0 + 200 + i, f"live{i % 100}", f"l{i}")], limits) == [True]
    assert clock.watermark == T0 + 499


def test_partitions_further_apart_than_the_jump_limit_need_a_wider_one() -> None:
    """A worker catching up on two backlogs, 9 and 1 days behind, 50 users each, batches alternating: with the
    default jump limit the later one looks like wrong clocks and is refused; above the spread both get in."""
    def run(limits: ClockLimits) -> dict[str, int]:
        clock, got = EventClock(), {"A": 0, "B": 0}
        for b in range(60):
            part = "AB"[b % 2]
            base = T0 - (9 if part == "A" else 1) * DAY + (b // 2) * 100
            got[part] += sum(accepted(clock, good(50, base, tag=part, step_s=2.0), limits))
        return got
    assert run(LIMITS) == {"A": 1500, "B": 0}
    assert run(ClockLimits(max_jump_s=10 * DAY)) == {"A": 1500, "B": 1500}
