"""The action catalogue: placements, the offers, creatives and templates eligible for them, and their rules.

``Catalogue.eligible(placement, ts, segment, consent, scores, usage)`` filters a placement's actions and
returns an :class:`Eligibility`: the eligible ids (a sequence of str, as before) plus, for every other
action of the placement, the filter that removed it (for the decision trace). Filters, in order:

- consent     the action needs marketing consent (``consent_needed``, default true) and the user refused
              it (consent False). Unknown consent (None) does not remove, like the engine's own check.
- dates       ``ts`` is before ``start`` or at/after ``end`` (ISO 8601, UTC). Skipped when ts is None.
- segment     the action lists ``segments`` and the user's segment is not one of them (or unknown).
- score       ``min_score = {score = "propensity", min = 0.1}``: the named model score is missing or lower.
- volume_cap / budget   ``max_per_day`` decisions or ``budget_per_day`` spend (sum of ``cost``) of the
              action in the UTC day would be passed; needs ``usage`` (a ``policy.budgets.WorkerBudgets``).

Fallbacks (and the holdout) show the placement's default only where the first two filters allow it
(``fallback_action``); otherwise "none".

Loading is in :mod:`policy.catalogue_file`; ``load_catalogue`` is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

from policy.contact import ContactPolicy
from policy.stickiness import StickinessSettings

NO_CONTACT_RULES = ContactPolicy()  # a channel without rules (frozen: one instance, not one per request)

if TYPE_CHECKING:
    from policy.budgets import WorkerBudgets

NO_ACTION = "none"
CHANNELS = ("web", "email", "ad")


class CatalogueError(ValueError):
    """The catalogue file cannot be used; the message names the file, line, entry and field to fix."""


@dataclass(frozen=True, slots=True)
class ScoreRule:
    score: str  # name of a model score, e.g. "propensity"
    min: float


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    channel: str
    placements: tuple[str, ...]
    value: float
    cost: float = 0.0
    start: float | None = None  # epoch seconds (UTC), inclusive
    end: float | None = None  # epoch seconds (UTC), exclusive
    segments: tuple[str, ...] = ()  # empty: every segment
    consent_needed: bool = True
    min_score: ScoreRule | None = None
    max_per_day: int | None = None
    budget_per_day: float | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    channel: str
    default_action: str = NO_ACTION
    stickiness: StickinessSettings = StickinessSettings()


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs 3-4x; never changed
class Request:
    """What the eligibility filters look at."""

    ts: float | None = None
    segment: str | None = None
    consent: bool | None = None
    scores: Mapping[str, float] = field(default_factory=dict)


def _consent(a: Action, r: Request) -> bool:
    return not (a.consent_needed and r.consent is False)


def _dates(a: Action, r: Request) -> bool:
    if r.ts is None:
        return True
    return (a.start is None or r.ts >= a.start) and (a.end is None or r.ts < a.end)


def _segment(a: Action, r: Request) -> bool:
    return not a.segments or r.segment in a.segments


def _score(a: Action, r: Request) -> bool:
    if a.min_score is None:
        return True
    # "propensity" means this action's own propensity ("propensity:<action id>"), other names as they are
    s = r.scores.get(f"{a.min_score.score}:{a.id}", r.scores.get(a.min_score.score))
    return s is not None and s >= a.min_score.min


# Filter name (as shown in traces) -> rule that keeps an action. Checked in this order.
FILTERS: dict[str, Callable[[Action, Request], bool]] = {
    "consent": _consent,
    "dates": _dates,
    "segment": _segment,
    "score": _score,
}
# When a filter can refuse an action at all; the others are skipped for it (the result is the same).
_APPLIES: dict[str, Callable[[Action], bool]] = {
    "consent": lambda a: a.consent_needed,
    "dates": lambda a: a.start is not None or a.end is not None,
    "segment": lambda a: bool(a.segments),
    "score": lambda a: a.min_score is not None,
}
_Rules = tuple[tuple[str, Callable[[Action, "Request"], bool]], ...]


def _rules_of(a: Action) -> tuple[Action, _Rules, bool]:
    """``a``, the filters that can refuse it (in order) and whether it has a daily volume or budget limit."""
    rules = tuple((name, keeps) for name, keeps in FILTERS.items() if _APPLIES[name](a))
    return a, rules, a.max_per_day is not None or a.budget_per_day is not None


class Eligibility(Sequence[str]):
    """Eligible action ids, in catalogue order, and ``removed``: action id -> filter that removed it."""

    __slots__ = ("_ids", "removed")

    def __init__(self, ids: Sequence[str], removed: Mapping[str, str] | None = None) -> None:
        self._ids = list(ids)
        self.removed = dict(removed or {})

    @classmethod
    def _owning(cls, ids: list[str], removed: dict[str, str]) -> Eligibility:
        """One that takes ``ids`` and ``removed`` as they are (new objects of the caller's: no copies)."""
        made = cls.__new__(cls)
        made._ids, made.removed = ids, removed
        return made

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        return self._ids[i]

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:  # faster than Sequence's index loop
        return iter(self._ids)

    def __contains__(self, action: object) -> bool:
        return action in self._ids

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Eligibility):
            return self._ids == other._ids and self.removed == other.removed
        return isinstance(other, list | tuple) and self._ids == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Eligibility({self._ids!r}, removed={self.removed!r})"

    def without(self, drop: Mapping[str, str]) -> Eligibility:
        """Remove more actions (``drop``: id -> reason); earlier reasons are kept."""
        if not drop:
            return Eligibility._owning(list(self._ids), dict(self.removed))
        removed = dict(self.removed)
        for a, why in drop.items():
            if a in self._ids:
                removed[a] = why
        return Eligibility._owning([a for a in self._ids if a not in drop], removed)


@dataclass(slots=True)
class Catalogue:
    placements: dict[str, Placement]
    actions: dict[str, Action]
    contact: dict[str, ContactPolicy] = field(default_factory=dict)  # channel -> contact policy
    _by_placement: dict[str, list[tuple[Action, _Rules, bool]]] = field(default_factory=dict, repr=False)
    _value_scale: float = field(default=1.0, init=False, repr=False)
    _ids_by_placement: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False)
    # _by_placement without the consent filter: for a request whose consent is not False, which it always keeps
    _consented_by_placement: dict[str, list[tuple[Action, _Rules, bool]]] = field(
        default_factory=dict, init=False, repr=False
    )
    # placement -> its actions, when for such a request no filter and no daily limit can refuse any of them
    _consented_unfiltered: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for p in self.placements:
            self._by_placement[p] = [_rules_of(a) for a in self.actions.values() if p in a.placements]
            self._consented_by_placement[p] = [
                (a, tuple((name, keeps) for name, keeps in rules if keeps is not _consent), limited)
                for a, rules, limited in self._by_placement[p]
            ]
            if not any(rules or limited for _, rules, limited in self._consented_by_placement[p]):
                self._consented_unfiltered[p] = tuple(a.id for a, _, _ in self._consented_by_placement[p])
            self._ids_by_placement[p] = tuple(a.id for a, _, _ in self._by_placement[p])
        self._value_scale = max((a.value for a in self.actions.values()), default=1.0) or 1.0

    def placement_actions(self, placement: str) -> tuple[str, ...]:
        """Every action of the placement in catalogue order, before any filter (what the models score:
        an action gated on its own score must be scored to pass)."""
        return self._ids_by_placement.get(placement, ())

    @property
    def value_scale(self) -> float:
        """Largest action value: rewards are divided by it so the bandit learns on a 0..~1 scale."""
        return self._value_scale

    def eligible(
        self,
        placement: str,
        ts: float | None = None,
        segment: str | None = None,
        consent: bool | None = None,
        scores: Mapping[str, float] | None = None,
        usage: WorkerBudgets | None = None,
    ) -> Eligibility:
        """The placement's actions that pass every filter, and why each other one did not.

        ``eligible(placement)`` alone gives the static set: no date or volume filter, unknown segment,
        unknown consent, no model scores.
        """
        if consent is not False:
            unfiltered = self._consented_unfiltered.get(placement)
            if unfiltered is not None:
                return Eligibility._owning(list(unfiltered), {})
        request = Request(ts, segment, consent, scores or {})
        ids: list[str] = []
        removed: dict[str, str] = {}
        limits = usage is not None and ts is not None
        by_placement = self._by_placement if consent is False else self._consented_by_placement
        for a, rules, limited in by_placement.get(placement, ()):
            reason = None
            for name, keeps in rules:  # the first filter that refuses names the reason
                if not keeps(a, request):
                    reason = name
                    break
            if reason is None and limited and limits:
                reason = usage.action_block(a.id, ts, a.cost, a.max_per_day, a.budget_per_day)  # type: ignore[union-attr,arg-type]
            if reason is None:
                ids.append(a.id)
            else:
                removed[a.id] = reason
        return Eligibility._owning(ids, removed)

    def default_action(self, placement: str) -> str:
        p = self.placements.get(placement)
        return p.default_action if p else NO_ACTION

    def fallback_action(self, placement: str, ts: float | None = None,
                        consent: bool | None = None) -> tuple[str, str | None]:
        """What a fallback (and the holdout) shows: the placement's default, unless this request may not see
        it: the user refused consent and the default needs it, or ``ts`` is outside its dates. Then "none",
        and the filter that withheld the default (for the trace); otherwise (default, None)."""
        default = self.default_action(placement)
        action = self.actions.get(default)
        if action is None:  # "none"
            return default, None
        request = Request(ts, None, consent)
        for name in ("consent", "dates"):
            if not FILTERS[name](action, request):
                return NO_ACTION, name
        return default, None

    def stickiness(self, placement: str) -> StickinessSettings:
        p = self.placements.get(placement)
        return p.stickiness if p else StickinessSettings()

    def contact_policy(self, channel: str) -> ContactPolicy:
        return self.contact.get(channel) or NO_CONTACT_RULES


def load_catalogue(path: str | Path) -> Catalogue:
    """Read and check a catalogue TOML file; :class:`CatalogueError` names the file, line and field."""
    # Imported here, not at the top: catalogue_file imports this module.
    from policy.catalogue_file import read_catalogue

    return read_catalogue(path)
