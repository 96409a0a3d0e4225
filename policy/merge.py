"""Three-way merge of a user's policy state, for two processes that decided for the user at the same moment.

``base`` is the state both decided from, ``ours`` what this process wants to store, ``theirs`` what Redis
holds now (another process's write, made from the same base). Per placement and per channel:

- unchanged on one side (equal to ``base``): the other side's entry (an entry absent on a side is None;
  a side that removed it wins the same way);
- changed on both sides: for a channel history, both sides' additions over ``base``
  (``merge_histories``); for a sticky state, the one changed later (``merge_sticky``). Two equal changes
  are two changes: two processes that each sent an email in the same second give equal histories, and
  both emails went out. (A write retried after Redis took it but its reply was lost is the engine's to
  recognise: Redis then holds what it wants to store, or an earlier state of its own that the one it wants
  to store was decided from, and it stores its state unmerged; engine/processor.py
  ``_merge_policy_states``.)

Pure: no I/O, the inputs are not changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TypeVar

from policy.contact import ChannelHistory
from policy.state import UserPolicyState
from policy.stickiness import StickyState

T = TypeVar("T")


def merge_states(base: UserPolicyState, ours: UserPolicyState, theirs: UserPolicyState) -> UserPolicyState:
    """The state holding both sides' changes over ``base`` (module docstring)."""
    return UserPolicyState(_merge_entries(base.sticky, ours.sticky, theirs.sticky, merge_sticky),
                           _merge_entries(base.contacts, ours.contacts, theirs.contacts, merge_histories))


def _merge_entries(base: Mapping[str, T], ours: Mapping[str, T], theirs: Mapping[str, T],
                   both: Callable[[T | None, T, T], T]) -> dict[str, T]:
    """Per key (placement or channel), the entry ``_pick`` keeps; a key no side keeps is left out."""
    out: dict[str, T] = {}
    for key in _keys(ours, theirs, base):
        entry = _pick(base.get(key), ours.get(key), theirs.get(key), both)
        if entry is not None:
            out[key] = entry
    return out


def _keys(*maps: Mapping[str, object]) -> list[str]:
    """Keys of all maps, in first-seen order (ours first: the encoding's order follows it)."""
    return list(dict.fromkeys(k for m in maps for k in m))


def _pick(base: T | None, ours: T | None, theirs: T | None, both: Callable[[T | None, T, T], T]) -> T | None:
    if ours == base:
        return theirs
    if theirs == base:
        return ours
    if ours is None or theirs is None:  # one side dropped the entry, the other changed it: keep the change
        return ours if ours is not None else theirs
    return both(base, ours, theirs)


def merge_sticky(base: StickyState | None, ours: StickyState, theirs: StickyState) -> StickyState:
    """Both sides changed the placement's incumbent: the one changed later (the later ``since``; on a tie
    the one with more changes, then ours) is the incumbent. Its change times take the other side's too
    (each is a change the user saw), so the rolling daily change cap counts both."""
    first, later = (ours, theirs) if (theirs.since, len(theirs.changes)) > (ours.since, len(ours.changes)) \
        else (theirs, ours)
    changes = tuple(sorted(set(later.changes) | set(first.changes)))
    return StickyState(later.action, later.since, changes)


def _day_counts(h: ChannelHistory, day: int) -> dict[str, int]:
    """Per-action counts of UTC ``day`` as ``h`` knows them ({} for a day it does not know)."""
    counts = h.counts_of(day)
    return counts if counts is not None else {}


def merge_histories(base: ChannelHistory | None, ours: ChannelHistory, theirs: ChannelHistory) -> ChannelHistory:
    """Both sides recorded contacts (or clicks) on the channel since ``base``; the history with both.

    - contacts: ``base``'s times plus each side's new ones (the times a side holds beyond ``base``'s, as a
      multiset), sorted. The list may then hold more than ``max_contacts`` times (the merge does not know
      the policy): every one of them happened, so the cap counts are right, and the next recorded contact
      trims the list again.
    - per-action counts: the day is the later of both sides' days (a day only moves forward); the counts
      of that day and of the day before are ``base``'s counts of the day plus each side's additions to it
      (a side's counts of the day minus ``base``'s, at least 0). A side that rolled over to a later day
      knows the earlier days only as far as its ``day_before`` reaches, which is all the result keeps.
    - ignored streak: a side whose streak is below ``base``'s saw a click. Neither clicked: ``base``'s
      streak plus both sides' new exposures. One clicked: its streak plus the other side's new exposures
      (counted as after the click: the order is not known, and the longer streak is the stricter one for
      the suppression rule). Both clicked: the sum of both streaks (all exposures after either click
      might have come after both). So the streak is at least as long as playing one side's events after
      the other's would give, in either order, except in one case the history cannot show: a side that
      clicked and then had at least as many exposures as ``base``'s streak looks like a side with no
      click, and when the other side clicked too, that side's exposures after its click are not all
      counted (the suppression may then start an exposure or a few later than it should).
    - last exposure: the later of both.
    """
    b = base if base is not None else ChannelHistory()
    base_times = Counter(b.contacts)
    added = (Counter(ours.contacts) - base_times) + (Counter(theirs.contacts) - base_times)
    contacts = sorted([*b.contacts, *added.elements()])

    day = max(ours.day, theirs.day, b.day)
    per_day: list[dict[str, int]] = []
    for d in (day, day - 1):
        base_counts = _day_counts(b, d) if d <= b.day else {}
        counts = dict(base_counts)
        for side in (ours, theirs):
            for action, n in _day_counts(side, d).items():
                extra = n - base_counts.get(action, 0)
                if extra > 0:
                    counts[action] = counts.get(action, 0) + extra
        per_day.append({a: n for a, n in counts.items() if n})

    def new_exposures(side: ChannelHistory) -> int:
        return max(0, side.ignored - b.ignored)

    o_click, t_click = ours.ignored < b.ignored, theirs.ignored < b.ignored
    if o_click and t_click:
        ignored = ours.ignored + theirs.ignored
    elif o_click:
        ignored = ours.ignored + new_exposures(theirs)
    elif t_click:
        ignored = theirs.ignored + new_exposures(ours)
    else:
        ignored = b.ignored + new_exposures(ours) + new_exposures(theirs)
    return ChannelHistory(contacts, day, per_day[0], ignored, max(ours.last_exposure, theirs.last_exposure,
                                                                   b.last_exposure), per_day[1])
