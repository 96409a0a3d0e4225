"""One user's policy state (stickiness per placement, contact history per channel) and its compact encoding.

Stored as one field of the user's Redis hash, as text with whole-second times (version 2), e.g.::

    1767225600|home_hero=offer_10pct,0,0,5400|email=0,,,1,0;ad=,0,creative_a:2,3,-7200,creative_a:6

that is ``base|sticky|contacts``: ``base`` the first time written (the first placement's start, else the
first channel's last exposure), the others as ``base - t``; each sticky entry
``placement=action,base-since[,age...]`` (ages: seconds before since, as ``StickyState.to_wire`` has them);
each channel ``channel=contacts,day,per_action,ignored,base-last[,day_before]`` with contacts joined by
``.``, day as days before base's day (empty: 0, no day) and per_action as ``action:count`` joined by ``.``;
``day_before`` (``ChannelHistory.day_before``, the per-action counts of the day before ``day``, which keep
late requests at the per-action daily cap) in per_action's syntax, written only when not empty. States
written before that field existed have five fields per channel and read as an empty day before. Times are
rounded up to whole seconds as the ``to_wire`` lists round them. A state with a name holding one of
``|;=,.:`` is written in version 1, JSON, which is read too::

    {"v":1,"s":{"home_hero":["offer_10pct",1767225600,[0,5400]]},"c":{"email":[[1767225600],20454,{},1,1767225600]}}

(a channel's list takes the day before's counts as a sixth element when they are not empty, see
``ChannelHistory.to_wire``).

A typical user with four placements and three channels takes 150-250 bytes (version 1: 300-500;
tests/unit/test_policy_state.py checks a full one stays under 1 KiB and that both versions read alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import orjson

from policy.contact import ChannelHistory, record_click
from policy.stickiness import StickyState

VERSION = 1  # of the JSON form; the text form is version 2
_DAY = 86400
_SEPARATORS = "|;=,.:"
_PLAIN: set[str] = set()  # names seen to hold no separator
_new_state = object.__new__


class PolicyStateError(ValueError):
    """A stored policy state cannot be read; start the user afresh with ``UserPolicyState()``."""


def _plain(name: str) -> bool:
    """Whether ``name`` holds no separator (remembered: names are catalogue ids, a few hundred)."""
    if name in _PLAIN:
        return True
    if any(c in name for c in _SEPARATORS):
        return False
    if len(_PLAIN) >= 10_000:
        _PLAIN.clear()
    _PLAIN.add(name)
    return True


@dataclass(slots=True)
class UserPolicyState:
    sticky: dict[str, StickyState] = field(default_factory=dict)  # placement -> incumbent
    contacts: dict[str, ChannelHistory] = field(default_factory=dict)  # channel -> history

    def copy(self) -> UserPolicyState:
        """A new state that may be changed without touching this one. Shallow: sticky states are frozen and
        channel histories are replaced, never changed in place (``record_contact`` and ``record_click``
        return new ones), so the copy shares them."""
        new = _new_state(UserPolicyState)  # both fields set here: the dataclass __init__ would cost ~40 ns more
        new.sticky = dict(self.sticky)
        new.contacts = dict(self.contacts)
        return new

    def after_click(self, channel: str) -> UserPolicyState:
        """The state after the user clicked on ``channel``: its ignored-exposure streak starts again."""
        new = self.copy()
        history = record_click(new.contacts.get(channel))
        if history is not None:
            new.contacts[channel] = history
        return new

    def encode(self) -> bytes:
        text = _text(self)
        if text is not None:
            return text.encode()
        return self._json()

    def encode_text(self) -> str:
        """``encode()`` as text (the engine stores text: no round trip through bytes)."""
        text = _text(self)
        return text if text is not None else self._json().decode()

    def _json(self) -> bytes:
        return orjson.dumps({"v": VERSION, "s": {p: s.to_wire() for p, s in self.sticky.items()},
                             "c": {c: h.to_wire() for c, h in self.contacts.items()}})

    @classmethod
    def decode(cls, raw: bytes | None) -> UserPolicyState:
        """The state in ``raw`` (either version); an empty state for None (a user never decided for)."""
        if raw is None:
            return cls()
        try:
            if raw[:1] == b"{":
                doc = orjson.loads(raw)
                if doc.get("v") != VERSION:
                    raise ValueError(f"version {doc.get('v')!r}, expected {VERSION}")
                sticky, contacts = doc["s"].items(), doc["c"].items()
            else:
                sticky, contacts = _wire_of(raw.decode())
            return cls(
                {p: StickyState.from_wire(s) for p, s in sticky},
                {c: ChannelHistory.from_wire(h) for c, h in contacts},
            )
        except (orjson.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyStateError(f"policy state {bytes(raw[:80])!r} cannot be read: {exc}") from None


def _text(state: UserPolicyState) -> str | None:
    """Version 2 of the state (None when a name holds a separator or a count is not an int).

    Times are rounded up to whole seconds as ``StickyState.to_wire`` and ``ChannelHistory.to_wire`` round
    them (tests/unit/test_policy_state.py checks that both versions decode alike); written here without
    their lists, which would cost as much again as the text. ``base`` is the first time met."""
    plain = _PLAIN
    base = None
    parts = []
    for placement, s in state.sticky.items():
        since, action = ceil(s.since), s.action
        if base is None:
            base = since
        if not ((placement in plain or _plain(placement)) and (action in plain or _plain(action))):
            return None
        if s.changes:
            parts.append(f"{placement}={action},{base - since}," + ",".join([str(since - ceil(t)) for t in s.changes]))
        else:
            parts.append(f"{placement}={action},{base - since}")
    sticky = ";".join(parts)
    parts = []
    for channel, h in state.contacts.items():
        last, day, ignored = ceil(h.last_exposure), h.day, h.ignored
        if base is None:
            base = last
        if not (channel in plain or _plain(channel)) or type(day) is not int or type(ignored) is not int:
            return None
        counts = _counts_text(h.per_action) if h.per_action else ""
        before = _counts_text(h.day_before) if h.day_before else ""
        if counts is None or before is None:
            return None
        times = ".".join([str(base - ceil(t)) for t in h.contacts]) if h.contacts else ""
        item = f"{channel}={times},{(base // _DAY - day) if day else ''},{counts},{ignored},{base - last}"
        parts.append(f"{item},{before}" if before else item)
    return f"{base or 0}|{sticky}|{';'.join(parts)}"


def _counts_text(counts: dict[str, int]) -> str | None:
    """``action:count`` joined by ``.`` ("" for none; None when an action holds a separator or a count is
    not an int)."""
    plain = _PLAIN
    parts = []
    for a, n in counts.items():
        if not (a in plain or _plain(a)) or type(n) is not int:
            return None
        parts.append(f"{a}:{n}")
    return ".".join(parts)


def _counts_of(text: str) -> dict[str, int]:
    return {a: int(n) for a, _, n in (c.partition(":") for c in text.split("."))} if text else {}


def _wire_of(text: str) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """The wire lists of a version-2 text."""
    base_text, sticky_text, contacts_text = text.split("|")
    base = int(base_text)
    base_day = base // _DAY
    sticky = []
    for item in sticky_text.split(";") if sticky_text else ():
        placement, _, rest = item.partition("=")
        action, since, *ages = rest.split(",")
        sticky.append((placement, [action, base - int(since), [int(a) for a in ages]]))
    contacts = []
    for item in contacts_text.split(";") if contacts_text else ():
        channel, _, rest = item.partition("=")
        times, day, counts, ignored, last, *before = rest.split(",")
        if len(before) > 1:
            raise ValueError(f"channel {channel!r} has {5 + len(before)} fields, expected 5 or 6")
        contacts.append((channel, [[base - int(t) for t in times.split(".")] if times else [],
                                   base_day - int(day) if day else 0, _counts_of(counts), int(ignored),
                                   base - int(last), _counts_of(before[0]) if before else {}]))
    return sticky, contacts
