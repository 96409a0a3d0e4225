"""Contact policies per channel: how often a user may be contacted, and when not at all.

A contact is a decision that shows something (any action other than "none") on the channel. Rules:

- quiet_hours_utc = [start, end): no contact while the UTC hour is in the range; it may wrap midnight
  ([21, 7] means 21:00-06:59 UTC).
- max_contacts per window_days (rolling, event time): e.g. at most 2 emails per user per 7 days.
- max_per_action_per_day: at most N impressions of the same action (creative, offer, template) per user
  per UTC calendar day. It removes that action only; the others stay eligible.
- suppress_after_ignored = N: after N exposures in a row without a click on the channel, no contact for
  suppress_days after the last exposure. Then one more exposure is allowed; if it is ignored too the
  pause starts again (a probe per pause). A click resets the count.

The per-user history per channel is small: the last ``max_contacts`` contact times, the per-action counts
of the latest UTC day with a contact and of the day before, the ignored streak and the last exposure time.
Requests come in event time and may be late; where the history no longer knows what happened around a late
request (a contact dropped from the last ``max_contacts`` that may lie in its window, a day older than the two
kept), the rule refuses: a cap is never passed because the history forgot. Dropped contacts are all at or
before the oldest one remembered, so with the memory full a request less than a window after that oldest one
(or before it) is refused; the history cannot tell whether any contact was dropped, so this also refuses when
exactly ``max_contacts`` contacts were ever made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from math import ceil

DAY_S = 86400.0


class ContactCap(StrEnum):
    """Which rule stopped a contact (trace and metric label)."""

    QUIET_HOURS = "quiet_hours"
    CHANNEL_CAP = "channel_cap"
    IGNORED_EXPOSURES = "ignored_exposures"
    ACTION_DAILY_CAP = "action_daily_cap"


@dataclass(frozen=True, slots=True)
class ContactPolicy:
    """Contact rules of one channel; the defaults impose none."""

    max_contacts: int | None = None
    window_days: float = 7.0
    max_per_action_per_day: int | None = None
    suppress_after_ignored: int | None = None
    suppress_days: float = 7.0
    quiet_hours_utc: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("max_contacts", "max_per_action_per_day", "suppress_after_ignored"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be an integer >= 0")
        for name in ("window_days", "suppress_days"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a number > 0")
        q = self.quiet_hours_utc
        if q is not None and (
            len(q) != 2
            or any(isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= 23 for h in q)
            or q[0] == q[1]
        ):
            raise ValueError("quiet_hours_utc must be [start, end], two different whole UTC hours 0..23")

    def is_quiet(self, ts: float) -> bool:
        if self.quiet_hours_utc is None:
            return False
        start, end = self.quiet_hours_utc
        hour = int(ts // 3600) % 24
        return start <= hour < end if start < end else hour >= start or hour < end


@dataclass(slots=True)
class ChannelHistory:
    """One user's contacts on one channel."""

    contacts: list[float] = field(default_factory=list)  # most recent last, at most max_contacts
    day: int = 0  # UTC day number the per_action counts belong to
    per_action: dict[str, int] = field(default_factory=dict)
    ignored: int = 0  # exposures since the last click
    last_exposure: float = 0.0
    day_before: dict[str, int] = field(default_factory=dict)  # per-action counts of day - 1 (late requests)

    def copy(self) -> ChannelHistory:
        return ChannelHistory(
            list(self.contacts), self.day, dict(self.per_action), self.ignored, self.last_exposure,
            dict(self.day_before),
        )

    def counts_of(self, day: int) -> dict[str, int] | None:
        """Per-action counts of UTC ``day``; None when the history no longer knows them (older days)."""
        if day > self.day:
            return {}
        if day == self.day:
            return self.per_action
        return self.day_before if day == self.day - 1 else None

    def to_wire(self) -> list:
        """[contact times, day, {action: count}, ignored, last exposure, {action: count of day - 1}] (the
        last only when not empty); times rounded up to seconds."""
        doc = [
            [math.ceil(t) for t in self.contacts],
            self.day,
            self.per_action,
            self.ignored,
            math.ceil(self.last_exposure),
        ]
        if self.day_before:
            doc.append(self.day_before)
        return doc

    @classmethod
    def from_wire(cls, doc: list) -> ChannelHistory:
        if not isinstance(doc, list) or len(doc) not in (5, 6):
            raise ValueError(f"channel history {doc!r} is not [contacts, day, per_action, ignored, last(, before)]")
        contacts, day, per_action, ignored, last = doc[:5]
        before = doc[5] if len(doc) == 6 else {}
        if not (
            isinstance(contacts, list)
            and isinstance(day, int)
            and isinstance(per_action, dict)
            and isinstance(ignored, int)
            and isinstance(last, int | float)
            and isinstance(before, dict)
        ):
            raise ValueError(f"channel history {doc!r} is not [contacts, day, per_action, ignored, last(, before)]")
        return cls(
            [float(t) for t in contacts],
            day,
            {str(k): int(v) for k, v in per_action.items()},
            ignored,
            float(last),
            {str(k): int(v) for k, v in before.items()},
        )


_NO_HISTORY = ChannelHistory()  # record_contact's starting point for a first contact (only read)


def channel_block(policy: ContactPolicy, history: ChannelHistory | None, ts: float) -> ContactCap | None:
    """The rule that forbids any contact on the channel at ``ts``, or None."""
    if policy.is_quiet(ts):
        return ContactCap.QUIET_HOURS
    if policy.max_contacts == 0:  # no contact at all, first ones included
        return ContactCap.CHANNEL_CAP
    if history is None:
        return None
    if policy.max_contacts is not None:
        window = policy.window_days * DAY_S
        # |ts - t| rather than ts - t: a late request also sees contacts made after it (stricter).
        if sum(1 for t in history.contacts if abs(ts - t) < window) >= policy.max_contacts:
            return ContactCap.CHANNEL_CAP
        # With the memory full, contacts may have been dropped from it, all at or before the oldest one
        # remembered (record_contact keeps the newest). When that one is less than a window before ts (or
        # after it), a dropped one may be in ts's window, uncounted, and with the oldest one (then in the
        # window too) the cap may already be reached: refuse. In order this refuses nothing the count above
        # lets through (every remembered contact is then in the window).
        if len(history.contacts) >= policy.max_contacts and history.contacts[0] > ts - window:
            return ContactCap.CHANNEL_CAP
    n = policy.suppress_after_ignored
    if n is not None and history.ignored >= n and ts < history.last_exposure + policy.suppress_days * DAY_S:
        return ContactCap.IGNORED_EXPOSURES
    return None


def action_capped(policy: ContactPolicy, history: ChannelHistory | None, action: str, ts: float) -> bool:
    """Has the user seen ``action`` max_per_action_per_day times in the UTC day of ``ts``?"""
    cap = policy.max_per_action_per_day
    if cap is None:
        return False
    if history is None:
        return cap == 0
    counts = history.counts_of(int(ts // DAY_S))
    if counts is None:  # a request two or more days older than the latest contact: its day is forgotten
        return True
    return counts.get(action, 0) >= cap


def record_contact(
    policy: ContactPolicy, history: ChannelHistory | None, action: str, ts: float
) -> ChannelHistory:
    """History after showing ``action`` at ``ts`` (a new object). Its time is kept rounded up to the second,
    as the stored state keeps it (policy/state.py): a worker that just decided holds the same history as one
    that reads it back, so both decide the next request alike."""
    # Built field by field rather than from history.copy(): a copy of what is replaced at once (every field
    # on a channel without caps) costs a list and two dicts per contact.
    at = ceil(ts)
    old = history if history is not None else _NO_HISTORY
    cap = policy.max_contacts
    contacts = sorted([*old.contacts, at])[-max(cap, 1) :] if cap is not None else []
    day = old.day
    if policy.max_per_action_per_day is not None:
        today = int(ts // DAY_S)
        if today > day:
            per_action: dict[str, int] = {}
            day_before = dict(old.per_action) if today == day + 1 else {}
            day = today
        else:
            per_action, day_before = dict(old.per_action), dict(old.day_before)
        h = ChannelHistory(contacts, day, per_action, old.ignored + 1, max(old.last_exposure, at), day_before)
        counts = h.counts_of(today)
        if counts is not None:
            counts[action] = counts.get(action, 0) + 1
        return h
    return ChannelHistory(contacts, day, {}, old.ignored + 1, max(old.last_exposure, at), {})


def record_click(history: ChannelHistory | None) -> ChannelHistory | None:
    """History after a click on the channel: the ignored streak starts again."""
    if history is None:
        return None
    h = history.copy()
    h.ignored = 0
    return h
