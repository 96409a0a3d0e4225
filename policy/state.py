"""One user's policy state (stickiness per placement, contact history per channel) and its compact encoding.

Stored as one field of the user's Redis hash. Encoded as JSON with whole-second times, e.g.::

    {"v":1,"s":{"home_hero":["offer_10pct",1767225600,[0,5400]]},"c":{"email":[[1767225600],20454,{},1,1767225600]}}

A typical user with four placements and three channels takes 300-500 bytes (tests/unit/test_policy_state.py
checks a full one stays under 1 KiB).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from policy.contact import ChannelHistory, record_click
from policy.stickiness import StickyState

VERSION = 1


class PolicyStateError(ValueError):
    """A stored policy state cannot be read; start the user afresh with ``UserPolicyState()``."""


@dataclass(slots=True)
class UserPolicyState:
    sticky: dict[str, StickyState] = field(default_factory=dict)  # placement -> incumbent
    contacts: dict[str, ChannelHistory] = field(default_factory=dict)  # channel -> history

    def copy(self) -> UserPolicyState:
        """A new state that may be changed without touching this one. Shallow: sticky states are frozen and
        channel histories are replaced, never changed in place (``record_contact`` and ``record_click``
        return new ones), so the copy shares them."""
        return UserPolicyState(dict(self.sticky), dict(self.contacts))

    def after_click(self, channel: str) -> UserPolicyState:
        """The state after the user clicked on ``channel``: its ignored-exposure streak starts again."""
        new = self.copy()
        history = record_click(new.contacts.get(channel))
        if history is not None:
            new.contacts[channel] = history
        return new

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": VERSION,
                "s": {p: s.to_wire() for p, s in self.sticky.items()},
                "c": {c: h.to_wire() for c, h in self.contacts.items()},
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> UserPolicyState:
        """The state in ``raw``; an empty state for None (a user never decided for)."""
        if raw is None:
            return cls()
        try:
            doc = orjson.loads(raw)
            if doc.get("v") != VERSION:
                raise ValueError(f"version {doc.get('v')!r}, expected {VERSION}")
            return cls(
                {p: StickyState.from_wire(s) for p, s in doc["s"].items()},
                {c: ChannelHistory.from_wire(h) for c, h in doc["c"].items()},
            )
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyStateError(f"policy state {bytes(raw[:80])!r} cannot be read: {exc}") from None
