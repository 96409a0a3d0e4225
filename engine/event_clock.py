"""The stream's event time as one worker judges it: which events are too far ahead or behind to believe.

Pure: timestamps in, verdicts out; no I/O and never the wall clock, so replay and the simulator judge events
exactly as a live worker does.

The watermark is the largest ts accepted so far. Each event is judged against a reference, the watermark or
a later time the batch agrees on, and refused when it is more than ``max_future_skew_s`` ahead of it, more
than ``max_lateness_s`` behind it, or more than ``max_jump_s`` ahead of the watermark.

Who may move event time on, and why:

- Users vote, not events: one vote per user in a batch (the user's first ts), so a client with a wrong
  clock that sends a burst has one voice however many events it sends. The batch's time is its median
  vote, the lower of the two middle ones when they are even: a good event and a wrong clock in a batch of
  two must not meet half way.
- The first batch (no watermark yet) is judged against the median of its largest group of votes within the
  skew of each other: with nothing to compare with, the time most users agree on. Wrong clocks are
  scattered, so many of them in the first batch do not set event time a year ahead, which would have
  refused every good event after as late, for good.
- A later batch whose median vote is not further ahead of the watermark than the stream's pace makes
  plausible is ordinary progress: the reference is that median. The plausible step is the skew, or
  ``pace_events`` times the median step of the watermark over the last ``pace_events`` accepted events
  if that is more (the jump limit until there are that many): a quiet stream, one event every quarter of
  an hour, may step hours ahead, while a stream of a thousand events a minute that suddenly says "two hours
  later" in a small batch is not believed. (The broker hands over whatever it has, one message at times, so
  a few wrong clocks can be most of a batch.) A median step, not the span: one lull or jump does not widen
  what is believed next.
- Further ahead (within the jump limit) the batch is believed only when most of its users, and at least
  ``advance_min_users`` of them, agree on that time within the skew: a busy stream that paused and came back.
- Thin traffic after a pause still gets through: ``advance_events`` events in a row refused as ahead (no
  event accepted between them), agreeing within the skew, from ``advance_min_users`` users and within the
  jump limit, move the watermark to their median. Events of the old time in between break the run: they
  show the stream's time did not move, only some clocks did.
- Beyond the jump limit, ``resync_events`` events in a row from ``resync_min_users`` users, nine in ten of
  them within a day of each other, resync the watermark: everyone's clock really jumped. Wrong clocks are
  few or scattered.
- Event time is anchored once ``advance_min_users`` users have had events accepted. Until then a group of
  users agreeing within a day on a time the clock refuses (votes of this batch and users refused before), at
  least ``CORROBORATION`` of them and more than back the clock, takes event time over: one event with a wrong
  clock first (a GET /decide on a wall clock ahead of the stream, one bad device in a quiet start) does not
  refuse every good event after it, for good. The clock yields only to more users than back it, so a few
  wrong clocks cannot take it from more good ones, and it changes hands at most ``advance_min_users`` times.
  Users, not events, and only while unanchored: the work is one pass over the batch, as for the median.
- Never back, once anchored: a run of many users' events beyond the lateness is what a backfill of old data
  looks like (2,000 events of 300 users dated 40 days back, in one burst at night), and moving event time back
  to it would refuse the live stream after it. Such events are refused; an anchored clock set wrong (many
  users agreed on a wrong time) is not corrected by the stream.
- Partitions further apart than the jump limit (a worker catching up on backlogs of different lag) look to
  the clock like a group of wrong clocks ahead: it keeps the first one's time and refuses the other until a
  resync. Set the jump limit above the spread expected when catching up. A restarting worker starts
  unanchored; it does not take the snapshot's watermark (the first batch of many users anchors it).
- Events are judged against times users corroborate: the latest time ``CORROBORATION`` (3) users have
  reached, not the watermark (the largest ts accepted). A backlog read in order moves that on with its many
  users; one client whose every event is a little under the skew beyond its last gets its first event in
  and no more, within a batch or across batches. The watermark stays at most the skew ahead of it.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.events import Event, Rejection, check_jump, check_watermark

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class ClockLimits:
    max_future_skew_s: float = 3600.0  # ahead of the reference: refused
    max_lateness_s: float = 30 * DAY_S  # behind the reference: refused
    max_jump_s: float = 7 * DAY_S  # ahead of the watermark: refused, whatever the batch says
    advance_min_users: int = 10  # users that must agree before event time moves past the skew
    advance_events: int = 20  # events in a row, refused as ahead, that move it within the jump limit
    resync_events: int = 1000  # events in a row, refused as ahead, that move it past the jump limit
    resync_min_users: int = 100  # users among them that must agree on the new time


PACE_EVENTS = 64  # accepted events over which the stream's pace is measured
CORROBORATION = 3  # users whose latest accepted times make the time events are judged against (see judge)


class EventClock:
    """The watermark and the run of events refused as ahead of it; ``judge`` is the only way in."""

    def __init__(self, pace_events: int = PACE_EVENTS) -> None:
        self.pace_events = pace_events
        self._watermark = 0.0
        self._recent: deque[float] = deque(maxlen=pace_events + 1)  # the watermark after each recent acceptance
        self._ahead: list[tuple[float, str]] = []  # (ts, user) of consecutive events refused as ahead
        self._top: dict[str, float] = {}  # the CORROBORATION users with the latest accepted times: user -> ts
        # kept as _top changes, read per event: its user with the least time (the first in _top's order of
        # those with that time, as min() finds it) and that time (0.0 while empty)
        self._oldest = ""
        self._corroborated = 0.0
        self._backers: set[str] = set()  # users accepted since event time was set, up to advance_min_users
        self._refused: dict[str, float] = {}  # while unanchored: each refused user's latest ts

    @property
    def watermark(self) -> float:
        """The largest event time accepted (0.0 before the first event)."""
        return self._watermark

    @property
    def corroborated(self) -> float:
        """The latest time that ``CORROBORATION`` users have reached (with fewer users seen, the least recent
        of theirs): what later events are judged against. Unlike the watermark, one client's clock cannot
        move it; the watermark is at most the skew ahead of it."""
        return self._corroborated

    def judge(self, events: Sequence[Event], limits: ClockLimits) -> list[Rejection | None]:
        """One verdict per event of a batch, in order: None (accepted, the watermark follows it) or why not.

        Within a batch the reference follows accepted events only as far as several users have got
        (``corroborated``): a backlog read in order moves it on, while one client with a wrong clock, each of
        its events a little under the skew beyond the last, is refused after the first."""
        if not events:
            return []
        anchored = len(self._backers) >= limits.advance_min_users
        if self._watermark and not anchored:
            self._reanchor(events, limits)
        reference = self._reference(events, limits)
        verdicts: list[Rejection | None] = []
        for event in events:
            reference = max(reference, self._corroborated)
            verdict = check_jump(event, self._watermark, limits.max_jump_s) \
                or check_watermark(event, reference, limits.max_future_skew_s, limits.max_lateness_s)
            if verdict is None:
                self._ahead.clear()
                self._watermark = max(self._watermark, event.ts)
                self._recent.append(self._watermark)
                self._reached(event.user_id, event.ts)
                if not anchored:
                    self._backers.add(event.user_id)
                    anchored = len(self._backers) >= limits.advance_min_users
                    if anchored:
                        self._refused.clear()
            else:
                if not anchored and len(self._refused) < limits.resync_events:
                    self._refused[event.user_id] = event.ts
                if self._watermark and event.ts > self._watermark:
                    self._note_ahead(event, limits)
            verdicts.append(verdict)
        return verdicts

    def _reanchor(self, events: Sequence[Event], limits: ClockLimits) -> None:
        """While fewer than ``advance_min_users`` users back event time, a larger group of users agreeing
        (within a day) on a time the clock refuses, in this batch or refused before, takes it over."""
        votes = dict(self._refused)
        for event in events:
            votes.setdefault(event.user_id, event.ts)
        if len(votes) < CORROBORATION or len(votes) <= len(self._backers):
            return
        run = sorted((ts, user) for user, ts in votes.items())
        group = _densest_run(run, DAY_S)
        if len(group) < CORROBORATION or len(group) <= len(self._backers):
            return
        middle = group[(len(group) - 1) // 2][0]
        agreed = self.corroborated
        if agreed - limits.max_lateness_s <= middle <= self._watermark + limits.max_jump_s:
            return  # a time the clock believes anyway: its events are judged as usual
        self._move_to(group, middle, "refused by a clock that too few users back")
        self._recent.clear()
        self._backers = {user for _, user in group[:limits.advance_min_users]}
        self._refused.clear()

    def _reached(self, user: str, ts: float) -> None:
        """``user``'s event at ``ts`` was accepted: keep the ``CORROBORATION`` users with the latest times."""
        top = self._top
        if user in top:
            if not ts > top[user]:  # what max(top[user], ts) keeps
                return
            top[user] = ts
        elif len(top) < CORROBORATION:
            top[user] = ts
        else:
            if not ts > self._corroborated:  # the time of the oldest of the top users
                return
            del top[self._oldest]
            top[user] = ts
        self._oldest = min(top, key=top.__getitem__)
        self._corroborated = top[self._oldest]

    def _reference(self, events: Sequence[Event], limits: ClockLimits) -> float:
        """The time this batch is judged against (see the module's notes)."""
        votes: dict[str, float] = {}
        for event in events:
            votes.setdefault(event.user_id, event.ts)
        if not self._watermark:
            return _densest(sorted(votes.values()), limits.max_future_skew_s)
        median = statistics.median_low(votes.values())  # a vote, the lower middle one: never a mean of two
        agreed = self.corroborated
        if median <= self._watermark + limits.max_future_skew_s \
                or median <= self._watermark + min(self._pace_s(limits), limits.max_jump_s):
            return max(agreed, median)
        if median > self._watermark + limits.max_jump_s:
            return agreed  # only a resync moves time that far
        agreeing = sum(1 for ts in votes.values() if abs(ts - median) <= limits.max_future_skew_s)
        if agreeing >= limits.advance_min_users and 2 * agreeing > len(votes):
            return median
        return agreed

    def _pace_s(self, limits: ClockLimits) -> float:
        """``pace_events`` ordinary steps of the watermark: the median step of the recent accepted events, times
        their number (the jump limit while there are fewer)."""
        if len(self._recent) <= self.pace_events:
            return limits.max_jump_s
        marks = list(self._recent)
        steps = sorted(later - earlier for earlier, later in zip(marks, marks[1:], strict=False))
        return steps[len(steps) // 2] * self.pace_events

    def _note_ahead(self, event: Event, limits: ClockLimits) -> None:
        """One more event refused as ahead, with none accepted since the last: did event time move on?"""
        self._ahead.append((event.ts, event.user_id))
        if len(self._ahead) >= limits.advance_events:
            recent = self._ahead[-limits.advance_events:]
            middle = _middle(recent)
            if middle <= self._watermark + limits.max_jump_s and \
                    self._agree(recent, middle, limits.max_future_skew_s, limits.advance_min_users):
                self._move_to(recent, middle, "in a row ahead of the watermark")
                return
        if len(self._ahead) >= limits.resync_events:
            middle = _middle(self._ahead)
            if self._agree(self._ahead, middle, DAY_S, limits.resync_min_users):
                self._move_to(self._ahead, middle, "in a row far ahead of the watermark")
            self._ahead.clear()

    @staticmethod
    def _agree(run: list[tuple[float, str]], middle: float, within_s: float, min_users: int) -> bool:
        """Nine in ten of the run within ``within_s`` of its middle, from at least ``min_users`` users."""
        near = [user for ts, user in run if abs(ts - middle) <= within_s]
        return len(near) >= 0.9 * len(run) and len(set(near)) >= min_users

    def _move_to(self, run: list[tuple[float, str]], middle: float, where: str) -> None:
        log.warning("%d events of %d users were %s: event time moved from %.0f to %.0f",
                    len(run), len({user for _, user in run}), where, self._watermark, middle)
        self._watermark = middle
        self._top = {user: middle for _, user in run[-CORROBORATION:]}  # the users that moved it agree on it
        self._oldest = next(iter(self._top))  # all at the same time: the first, as min() finds it
        self._corroborated = middle
        self._ahead.clear()


def _middle(run: list[tuple[float, str]]) -> float:
    times = sorted(ts for ts, _ in run)
    return times[len(times) // 2]


def _densest_run(run: list[tuple[float, str]], width_s: float) -> list[tuple[float, str]]:
    """The largest group of ``run`` (sorted by ts) whose times lie within ``width_s`` of each other."""
    start, size, low = 0, 0, 0
    for high, (ts, _) in enumerate(run):
        while ts - run[low][0] > width_s:
            low += 1
        if high - low + 1 > size:
            start, size = low, high - low + 1
    return run[start:start + size]


def _densest(times: list[float], width_s: float) -> float:
    """The lower median of the largest group of sorted ``times`` that lie within ``width_s`` of each other."""
    start, size, low = 0, 0, 0
    for high, ts in enumerate(times):
        while ts - times[low] > width_s:
            low += 1
        if high - low + 1 > size:
            start, size = low, high - low + 1
    return times[start + (size - 1) // 2]
