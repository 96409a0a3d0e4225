"""Levers: human overrides of the policy, each one audited (who, when, why).

- pin:   force an action (mode "pinned", probability 1) if it is eligible for the request.
- boost: multiply an action's expected value in arbitration by ``factor`` (0.5 halves, 2 doubles).
- ban:   remove an action from the eligible set. A ban beats a pin.
- kill:  kill switch, the placement's default action for everyone (mode "fallback").

A lever targets one user (``user_id``), one segment (``segment``) or everyone (neither), on one
placement or all (``placement`` None). It applies to events from ``ts`` (event time, epoch seconds) until
``expires`` (event time; None: until revoked). A lever set by a person "now" has no ``ts``: it applies to
every event processed after it was set, whatever its event time (out-of-order events, a worker working
through a backlog), and ``set_at`` records the wall-clock time it was set (the audit's time). When several
pins apply, the most specific wins (user, then segment, then everyone), then the one set last (``set_at``,
else ``ts`` for levers from before ``set_at`` was kept). Boosts multiply, and their product is held within
``BOOST_RANGE``; bans add up.

:class:`LeverBook` holds the levers and is plain data: ``to_json``/``from_json`` for Redis, ``apply``/``revoke``
for the CLI and HTTP endpoints. Its JSON, which every worker reloads after any change, holds only the levers: each
change leaves an :class:`AuditRecord` in the book (``pending_audit``) that the store takes (``take_audit``) and
appends to the audit list in Redis in the same transaction (policy/lever_store.py), so the audit never grows the
book. A book stored by a release that kept the audit inside it loads with those records pending, oldest first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from policy.catalogue import Catalogue

# What a boost lever may multiply an action's expected value by (entry points refuse the rest): a factor of 1e308
# made the expected value infinite, and the ad placement's bid reference with it, for as long as the worker ran.
BOOST_RANGE = (0.001, 1000.0)
LOG_HIGH = math.log(BOOST_RANGE[1]) + 1.0  # a larger sum of log factors is clamped to the top anyway (no exp overflow)


class LeverError(ValueError):
    """A lever cannot be applied; the message says which field to fix."""


class LeverKind(StrEnum):
    PIN = "pin"
    BOOST = "boost"
    BAN = "ban"
    KILL = "kill"


@dataclass(frozen=True, slots=True)
class Lever:
    lever_id: str
    kind: LeverKind
    who: str
    why: str
    ts: float | None = None  # event time it applies from; None: every event processed after it was set
    action: str | None = None  # None only for kill
    user_id: str | None = None
    segment: str | None = None
    placement: str | None = None
    factor: float = 1.0  # boost multiplier
    expires: float | None = None  # event time it stops applying at
    set_at: float | None = None  # wall-clock time a person set it (audit), whatever its ts

    def check(self) -> None:
        if not self.lever_id or not isinstance(self.lever_id, str):
            raise LeverError("lever_id must be a non-empty string")
        # a lever is shared by every worker and read on every decision: a wrong type must be refused here,
        # not fail every decision later
        for name in ("who", "why", "action", "user_id", "segment", "placement"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise LeverError(f"lever {self.lever_id!r}: {name!r} must be a string, got {value!r:.60}")
        for name in ("factor", "expires"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise LeverError(f"lever {self.lever_id!r}: {name!r} must be a number, got {value!r:.60}")
        if self.ts is not None and (isinstance(self.ts, bool) or not isinstance(self.ts, int | float)
                                    or not math.isfinite(self.ts)):
            raise LeverError(
                f"lever {self.lever_id!r}: 'ts' must be event time in epoch seconds, got {self.ts!r}; leave it "
                "out for a lever that applies to every event processed from now on"
            )
        if self.set_at is not None and (isinstance(self.set_at, bool) or not isinstance(self.set_at, int | float)
                                        or not math.isfinite(self.set_at)):
            raise LeverError(
                f"lever {self.lever_id!r}: 'set_at' must be the wall-clock time it was set, in epoch seconds, "
                f"got {self.set_at!r}"
            )
        if not self.who or not self.why:
            raise LeverError(
                f"lever {self.lever_id!r}: 'who' and 'why' are required, every change is audited"
            )
        if self.kind is not LeverKind.KILL and not self.action:
            raise LeverError(f"lever {self.lever_id!r}: a {self.kind.value} lever needs an 'action'")
        if self.user_id and self.segment:
            raise LeverError(f"lever {self.lever_id!r}: target a 'user_id' or a 'segment', not both")
        if self.kind is LeverKind.BOOST and not (math.isfinite(self.factor) and self.factor > 0):
            raise LeverError(
                f"lever {self.lever_id!r}: boost 'factor' must be a number > 0, got {self.factor}"
            )
        if self.expires is not None and not math.isfinite(self.expires):  # NaN is stored as null: never expiring
            raise LeverError(
                f"lever {self.lever_id!r}: 'expires' must be a finite event time in epoch seconds, got "
                f"{self.expires!r}; leave it out for a lever that does not expire"
            )
        if self.expires is not None and self.ts is None and self.set_at is not None and self.expires <= self.set_at:
            raise LeverError(
                f"lever {self.lever_id!r}: 'expires' ({self.expires}) must be after the time it is set "
                f"({self.set_at:.0f}): a lever that is over already would still hold late and backlog events"
            )
        if self.expires is not None and self.ts is not None and self.expires <= self.ts:
            raise LeverError(
                f"lever {self.lever_id!r}: 'expires' ({self.expires}) must be after 'ts' ({self.ts})"
            )

    def check_targets(self, catalogue: Catalogue) -> None:
        """Refuse a lever naming a placement or action ``catalogue`` does not have, or an action that is not
        on the lever's placement: a typo would be stored and then match nothing (a kill switch killing
        nothing). For the entry points (CLI, HTTP), with the catalogue the workers use; runs ``check`` first."""
        boost_number = isinstance(self.factor, (int, float)) and not isinstance(self.factor, bool)
        if self.kind is LeverKind.BOOST and boost_number and not BOOST_RANGE[0] <= self.factor <= BOOST_RANGE[1]:
            raise LeverError(  # before check(): its "> 0" is the rule for stored levers, not the range to use
                f"lever {self.lever_id!r}: boost 'factor' must be between {BOOST_RANGE[0]:g} and {BOOST_RANGE[1]:g}, "
                f"got {self.factor:g}; use a ban or a pin to hold an action back or force it"
            )
        self.check()  # types first: a list where an id belongs is named as such, not looked up
        for name in ("user_id", "segment", "placement"):
            if getattr(self, name) == "":
                raise LeverError(f"lever {self.lever_id!r}: {name!r} is empty and would match nobody; leave it out "
                                 f"to target every {name.removesuffix('_id')}")
        if self.placement is not None and self.placement not in catalogue.placements:
            raise self._unknown("placement", self.placement, catalogue.placements)
        if self.action is None:
            return
        action = catalogue.actions.get(self.action)
        if action is None:
            raise self._unknown("action", self.action, catalogue.actions)
        if self.placement is not None and self.placement not in action.placements:
            raise LeverError(
                f"lever {self.lever_id!r}: action {self.action!r} is not on placement {self.placement!r} "
                f"(its actions: {', '.join(catalogue.placement_actions(self.placement)) or 'none'}); "
                f"{self.action!r} is on: {', '.join(action.placements)}"
            )

    def _unknown(self, what: str, value: str, known: Iterable[str]) -> LeverError:
        return LeverError(f"lever {self.lever_id!r}: unknown {what} {value!r}; known {what}s: "
                          f"{', '.join(sorted(known))}")

    def applies(self, ts: float, user_id: str, segment: str | None, placement: str) -> bool:
        return (
            (self.ts is None or self.ts <= ts)
            and (self.expires is None or ts < self.expires)
            and (self.placement is None or self.placement == placement)
            and (self.user_id is None or self.user_id == user_id)
            and (self.segment is None or self.segment == segment)
        )

    @property
    def specificity(self) -> int:
        return 2 if self.user_id else 1 if self.segment else 0

    @property
    def since(self) -> float:
        """When it was set, to tell the latest of two pins: ``set_at`` (wall clock), else ``ts`` (a lever from
        before ``set_at`` was kept); one clock for both, so an event-time ``ts`` in the past does not make a
        pin set later lose."""
        return self.set_at if self.set_at is not None else self.ts if self.ts is not None else -math.inf

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["kind"] = self.kind.value
        return {k: v for k, v in doc.items() if v is not None}

    @classmethod
    def from_dict(cls, doc: dict) -> Lever:
        """A lever from its JSON; a missing, unknown or mistyped field is a :class:`LeverError` naming it."""
        kinds = ", ".join(k.value for k in LeverKind)
        kind = doc.get("kind")
        if kind is None:
            raise LeverError(f"'kind' is required: one of {kinds}")
        if not isinstance(kind, str) or kind not in {k.value for k in LeverKind}:
            raise LeverError(f"'kind' must be one of {kinds}, got {kind!r:.60}")
        known = [f.name for f in fields(cls)]
        unknown = [str(k) for k in doc if k not in known]
        if unknown:
            raise LeverError(f"unknown field {unknown[0][:60]!r}; a lever has {', '.join(known)}")
        missing = [name for name in ("lever_id", "who", "why") if doc.get(name) is None]
        if missing:
            raise LeverError(f"{missing[0]!r} is required (a string): every change is audited with who and why")
        return cls(**{**doc, "kind": LeverKind(kind)})


@dataclass(frozen=True, slots=True)
class AuditRecord:
    ts: float  # when the change was made (wall clock; a lever's own ts if it has no set_at)
    who: str
    why: str
    change: str  # "apply", "replace" or "revoke"
    lever_id: str
    lever: dict


    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> AuditRecord:
        try:
            doc = orjson.loads(raw)
            record = cls(**doc)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise LeverError(f"lever audit entry is damaged ({exc}): {raw[:120]!r}") from None
        if not isinstance(record.lever, dict):
            raise LeverError(f"lever audit entry is damaged ('lever' is no object): {raw[:120]!r}")
        return record


def redact(record: AuditRecord, user_id: str, replacement: str) -> AuditRecord:
    """``record`` with ``replacement`` for ``user_id`` where its lever names the user (GDPR erasure)."""
    if record.lever.get("user_id") != user_id:
        return record
    return replace(record, lever={**record.lever, "user_id": replacement})


@dataclass(frozen=True, slots=True)
class ActiveLevers:
    """The levers that apply to one request."""

    kill: str | None = None  # id of the kill switch lever
    pin: str | None = None  # pinned action
    pin_lever: str | None = None
    boosts: dict[str, float] = field(default_factory=dict)
    bans: frozenset[str] = frozenset()
    lever_ids: tuple[str, ...] = ()


NO_LEVERS = ActiveLevers()


class LeverBook:
    def __init__(self) -> None:
        self._levers: dict[str, Lever] = {}
        self._audit: list[AuditRecord] = []  # not in the audit list yet: an old book's, then this book's changes
        self._redactions: list[tuple[str, str]] = []  # (user_id, replacement) for the audit list, from forget_user

    @property
    def levers(self) -> list[Lever]:
        return list(self._levers.values())

    @property
    def pending_audit(self) -> list[AuditRecord]:
        """The audit records not in the shared audit list yet, oldest first: those a book of the previous release
        held in its JSON, then those of the changes made to this book since it was read."""
        return list(self._audit)

    def take_audit(self) -> list[AuditRecord]:
        """The pending audit records, oldest first, for the store to append to the audit list; empties them."""
        records, self._audit = self._audit, []
        return records

    def take_redactions(self) -> list[tuple[str, str]]:
        """``(user_id, replacement)`` for each ``forget_user`` since the last call: the store writes the
        replacement where the audit list names the user; empties them."""
        redactions, self._redactions = self._redactions, []
        return redactions

    def apply(self, lever: Lever) -> None:
        """Add a lever, or replace the one with the same id (both audited)."""
        lever.check()
        change = "replace" if lever.lever_id in self._levers else "apply"
        self._levers[lever.lever_id] = lever
        when = lever.set_at if lever.set_at is not None else lever.ts if lever.ts is not None else time.time()
        self._audit.append(AuditRecord(when, lever.who, lever.why, change, lever.lever_id, lever.to_dict()))

    def revoke(self, lever_id: str, who: str, why: str, ts: float) -> None:
        """Remove a lever at once; ``ts`` is when (wall clock) for the audit."""
        if not who or not why:
            raise LeverError("revoking needs 'who' and 'why': every change is audited")
        lever = self._levers.pop(lever_id, None)
        if lever is None:
            raise LeverError(f"no lever {lever_id!r}; known: {sorted(self._levers)}")
        self._audit.append(AuditRecord(ts, who, why, "revoke", lever_id, lever.to_dict()))

    def revoke_kills(self, placement: str | None, who: str, why: str, ts: float) -> list[str]:
        """Switch a kill off: revoke every kill lever of that scope (``placement``, or None for the ones on every
        placement) that targets every user, whoever set it and whatever its id (the CLI's ``kill-<random>`` as the
        HTTP ``kill-<scope>``); returns their ids (none: nothing was on). A narrower kill (a segment's or a user's,
        e.g. a compliance kill for minors) is not this switch's: it stays, revoked by its id."""
        if not who or not why:
            raise LeverError("revoking needs 'who' and 'why': every change is audited")
        ids = sorted(i for i, lv in self._levers.items() if lv.kind is LeverKind.KILL and lv.placement == placement
                     and lv.user_id is None and lv.segment is None)
        for lever_id in ids:
            self.revoke(lever_id, who, why, ts)
        return ids

    def kills(self) -> list[Lever]:
        """The kill levers set (of every scope)."""
        return [lv for lv in self._levers.values() if lv.kind is LeverKind.KILL]

    def forget_user(self, user_id: str, replacement: str) -> int:
        """GDPR erasure: drop the levers that target ``user_id`` and write ``replacement`` (a digest, not the
        id) where the audit names them: in the pending records here, and (``take_redactions``) in the audit list
        by the store; returns how many levers were dropped. The audit keeps who did what."""
        gone = [k for k, lv in self._levers.items() if lv.user_id == user_id]
        for k in gone:
            del self._levers[k]
        self._audit = [redact(a, user_id, replacement) for a in self._audit]
        self._redactions.append((user_id, replacement))
        return len(gone)

    def prune(self, ts: float) -> list[str]:
        """Drop levers expired at ``ts`` (the audit keeps them); returns their ids."""
        gone = [k for k, v in self._levers.items() if v.expires is not None and v.expires <= ts]
        for k in gone:
            del self._levers[k]
        return gone

    def active(self, ts: float, user_id: str, segment: str | None, placement: str) -> ActiveLevers:
        if not self._levers:  # the usual case, asked on every request
            return NO_LEVERS
        hits = [lv for lv in self._levers.values() if lv.applies(ts, user_id, segment, placement)]
        if not hits:
            return NO_LEVERS
        kill = next((lv.lever_id for lv in hits if lv.kind is LeverKind.KILL), None)
        pins = [lv for lv in hits if lv.kind is LeverKind.PIN]
        pin = max(pins, key=lambda lv: (lv.specificity, lv.since, lv.lever_id)) if pins else None
        boosts: dict[str, float] = {}
        for lv in hits:
            if lv.kind is LeverKind.BOOST and lv.action:
                boosts[lv.action] = boosts.get(lv.action, 1.0) * lv.factor
        low, high = BOOST_RANGE
        # the product of many boosts stays in range too (finite evs). Out of range (rare), it is recomputed from the
        # sum of logs, so a product that overflowed or underflowed midway does not depend on the levers' order
        for action, factor in boosts.items():
            if not low <= factor <= high:
                logs = sum(math.log(lv.factor) for lv in hits if lv.kind is LeverKind.BOOST and lv.action == action)
                boosts[action] = min(max(math.exp(min(logs, LOG_HIGH)), low), high)
        bans = frozenset(lv.action for lv in hits if lv.kind is LeverKind.BAN and lv.action)
        return ActiveLevers(
            kill,
            pin.action if pin else None,
            pin.lever_id if pin else None,
            boosts,
            bans,
            tuple(sorted(lv.lever_id for lv in hits)),
        )

    def to_json(self) -> bytes:
        """The levers only (the audit is the store's list). ``"audit": []`` stays for workers of the previous
        release, which refuse a book without it, until every worker is upgraded."""
        return orjson.dumps({"levers": [lv.to_dict() for lv in self._levers.values()], "audit": []})

    @classmethod
    def from_json(cls, raw: bytes | str) -> LeverBook:
        try:
            doc = orjson.loads(raw)
            book = cls()
            for d in doc["levers"]:
                lever = Lever.from_dict(d)
                lever.check()
                book._levers[lever.lever_id] = lever
            # a book of the previous release holds its audit: pending, for the store to move to the audit list
            book._audit = [AuditRecord(**r) for r in doc.get("audit", ())]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise LeverError(f"lever book JSON is damaged ({exc}); restore it from the audit log") from None
        return book
