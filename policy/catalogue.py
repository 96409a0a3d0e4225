"""The action catalogue: placements and the offers, creatives and templates eligible for them."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

NO_ACTION = "none"
CHANNELS = ("web", "email", "ad")


class CatalogueError(ValueError):
    """The catalogue file cannot be used; the message names the entry and the field to fix."""


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    channel: str
    placements: tuple[str, ...]
    value: float
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    channel: str
    default_action: str = NO_ACTION


@dataclass(slots=True)
class Catalogue:
    placements: dict[str, Placement]
    actions: dict[str, Action]
    _eligible: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for p in self.placements:
            self._eligible[p] = [a.id for a in self.actions.values() if p in a.placements]

    @property
    def value_scale(self) -> float:
        """Largest action value: rewards are divided by it so the bandit learns on a 0..~1 scale."""
        return max((a.value for a in self.actions.values()), default=1.0) or 1.0

    def eligible(self, placement: str) -> list[str]:
        return self._eligible.get(placement, [])

    def default_action(self, placement: str) -> str:
        p = self.placements.get(placement)
        return p.default_action if p else NO_ACTION


def _entry_name(kind: str, i: int, doc: dict) -> str:
    return f"[[{kind}]] #{i + 1}" + (f" (id={doc['id']!r})" if isinstance(doc.get("id"), str) else "")


def load_catalogue(path: str | Path) -> Catalogue:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CatalogueError(f"{path}: no such catalogue file; set CADENCE_CATALOGUE to an existing file") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML: {exc}") from None
    placements: dict[str, Placement] = {}
    for i, p in enumerate(doc.get("placement", [])):
        where = f"{path}: {_entry_name('placement', i, p)}"
        if not isinstance(p.get("id"), str) or not p["id"]:
            raise CatalogueError(f"{where}: field 'id' must be a non-empty string")
        if p.get("channel") not in CHANNELS:
            raise CatalogueError(f"{where}: field 'channel' must be one of {CHANNELS}")
        placements[p["id"]] = Placement(p["id"], p["channel"], p.get("default_action", NO_ACTION))
    actions: dict[str, Action] = {}
    for i, a in enumerate(doc.get("action", [])):
        where = f"{path}: {_entry_name('action', i, a)}"
        if not isinstance(a.get("id"), str) or not a["id"] or a["id"] == NO_ACTION:
            raise CatalogueError(f"{where}: field 'id' must be a non-empty string other than {NO_ACTION!r}")
        if a["id"] in actions:
            raise CatalogueError(f"{where}: field 'id' repeats an earlier action")
        if a.get("channel") not in CHANNELS:
            raise CatalogueError(f"{where}: field 'channel' must be one of {CHANNELS}")
        for name in ("value", "cost"):
            v = a.get(name, 0.0)
            if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                raise CatalogueError(f"{where}: field {name!r} must be a number >= 0")
        for pl in a.get("placements", []):
            if pl not in placements:
                raise CatalogueError(f"{where}: field 'placements' names unknown placement {pl!r}")
            if placements[pl].channel != a["channel"]:
                raise CatalogueError(f"{where}: field 'placements': {pl!r} is a {placements[pl].channel} placement")
        actions[a["id"]] = Action(a["id"], a["channel"], tuple(a.get("placements", [])), float(a["value"]), float(a.get("cost", 0.0)))
    for p in placements.values():
        if p.default_action != NO_ACTION and p.default_action not in actions:
            raise CatalogueError(f"{path}: placement {p.id!r}: field 'default_action' names unknown action {p.default_action!r}")
    return Catalogue(placements, actions)
