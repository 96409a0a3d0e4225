"""Reading the catalogue TOML: every field checked, every error naming the file, line, entry and field."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

from policy.catalogue import CHANNELS, NO_ACTION, Action, Catalogue, CatalogueError, Placement, ScoreRule
from policy.contact import ContactPolicy
from policy.stickiness import StickinessSettings
from policy.toml_lines import SourceLines


class _Bad(Exception):
    """A field value is wrong; the text says what it must be."""


# -- field checks: value in, converted value out, _Bad with what is expected ----------------------------
def _text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _Bad("must be a non-empty string")
    return v


def _texts(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise _Bad("must be a list of non-empty strings")
    return tuple(v)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise _Bad("must be a number >= 0")
    return float(v)


def _positive(v: Any) -> float:
    if _number(v) == 0:
        raise _Bad("must be a number > 0")
    return float(v)


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad("must be a whole number >= 0")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad("must be true or false")
    return v


def _channel(v: Any) -> str:
    if v not in CHANNELS:
        raise _Bad(f"must be one of {CHANNELS}")
    return v


def _instant(v: Any) -> float:
    """ISO 8601 text or a TOML date/datetime -> epoch seconds. Dates mean 00:00 UTC; times need an offset."""
    if isinstance(v, str):
        try:
            text = v.upper()  # RFC 3339 allows 't' and 'z'; Python's parser takes upper case only
            v = datetime.fromisoformat(text) if "T" in text or " " in text else date.fromisoformat(text)
        except ValueError:
            raise _Bad(f"{v!r} is not an ISO 8601 date or time, e.g. '2026-11-01T00:00:00Z'") from None
    if isinstance(v, datetime):
        if v.tzinfo is None:
            raise _Bad(f"{v.isoformat()!r} has no UTC offset; add 'Z' for UTC, e.g. '2026-11-01T00:00:00Z'")
        return v.timestamp()
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=UTC).timestamp()
    raise _Bad("must be an ISO 8601 date or time, e.g. '2026-11-01T00:00:00Z'")


def _hours(v: Any) -> tuple[int, int]:
    ok = (
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h <= 23 for h in v)
    )
    if not ok or v[0] == v[1]:
        raise _Bad("must be [start, end]: two different whole UTC hours 0..23, e.g. [21, 7]")
    return (v[0], v[1])


_PLACEMENT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "id": _text,
    "channel": _channel,
    "default_action": _text,
}
_ACTION_FIELDS: dict[str, Callable[[Any], Any]] = {
    "id": _text,
    "channel": _channel,
    "placements": _texts,
    "value": _number,
    "cost": _number,
    "start": _instant,
    "end": _instant,
    "segments": _texts,
    "consent_needed": _boolean,
    "max_per_day": _count,
    "budget_per_day": _number,
}
_STICKINESS_FIELDS: dict[str, Callable[[Any], Any]] = {
    "min_dwell_s": _number,
    "hysteresis": _number,
    "max_changes_per_day": _count,
    "max_changes_per_hour": _count,
    "confidence": _number,
}
_CONTACT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "max_contacts": _count,
    "window_days": _positive,
    "max_per_action_per_day": _count,
    "suppress_after_ignored": _count,
    "suppress_days": _positive,
    "quiet_hours_utc": _hours,
}


class _Entry:
    """One table of the file: knows its name and lines, so its errors point at the right place."""

    def __init__(self, path: Path, lines: SourceLines, table: tuple, name: str, doc: Any) -> None:
        self.path, self.lines, self.table, self.name = path, lines, table, name
        if not isinstance(doc, dict):
            self.fail(None, f"must be a table, got {type(doc).__name__}")
        self.doc: dict[str, Any] = doc

    def fail(self, key: str | None, problem: str, sub: tuple = ()) -> NoReturn:
        line = self.lines.line_of((*self.table, *sub), key)
        where = f"field {'.'.join((*map(str, sub), key))!r} " if key else ""
        raise CatalogueError(f"{self.path}, line {line}: {self.name}: {where}{problem}")

    def fields(
        self,
        checks: dict[str, Callable[[Any], Any]],
        required: tuple[str, ...] = (),
        sub: tuple = (),
        nested: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        doc = self.doc
        for s in sub:
            doc = doc.get(s, {})
        for key in required:
            if key not in doc:
                self.fail(key, "is required", sub)
        out: dict[str, Any] = {}
        for key, v in doc.items():
            if key in nested:
                continue
            check = checks.get(key)
            if check is None:
                self.fail(key, f"is not a known field; known: {sorted([*checks, *nested])}", sub)
            try:
                out[key] = check(v)
            except _Bad as exc:
                self.fail(key, str(exc), sub)
        return out


def _name(kind: str, i: int, doc: Any) -> str:
    ident = doc.get("id") if isinstance(doc, dict) else None
    return f"[[{kind}]] #{i + 1}" + (f" (id={ident!r})" if isinstance(ident, str) else "")


def _placement(e: _Entry) -> Placement:
    f = e.fields(_PLACEMENT_FIELDS, required=("id", "channel"), nested=("stickiness",))
    sticky = e.doc.get("stickiness", {})
    if not isinstance(sticky, dict):
        e.fail("stickiness", "must be a table, e.g. [placement.stickiness] after the [[placement]]")
    given = e.fields(_STICKINESS_FIELDS, sub=("stickiness",))
    settings = StickinessSettings(**given)
    if given.get("confidence", 0) > 0 and not settings.limited:
        e.fail("confidence", "applies to a change the other rules allow, and none is set here: add min_dwell_s, "
               "hysteresis or a max_changes_* limit, or remove confidence", sub=("stickiness",))
    return Placement(f["id"], f["channel"], f.get("default_action", NO_ACTION), settings)


def _score_rule(e: _Entry) -> ScoreRule | None:
    rule = e.doc.get("min_score")
    if rule is None:
        return None
    if not isinstance(rule, dict) or set(rule) != {"score", "min"}:
        e.fail("min_score", 'must be a table {score = "<model score name>", min = <number>}')
    if not isinstance(rule["score"], str) or not rule["score"]:
        e.fail("score", 'must name a model score, e.g. "propensity"', ("min_score",))
    if (
        isinstance(rule["min"], bool)
        or not isinstance(rule["min"], int | float)
        or not math.isfinite(rule["min"])
    ):
        e.fail("min", "must be a number", ("min_score",))
    return ScoreRule(rule["score"], float(rule["min"]))


def _action(e: _Entry, placements: dict[str, Placement], actions: dict[str, Action]) -> Action:
    f = e.fields(_ACTION_FIELDS, required=("id", "channel", "value"), nested=("min_score",))
    if f["id"] == NO_ACTION:
        e.fail("id", f"must not be {NO_ACTION!r}: that name means 'show nothing'")
    if f["id"] in actions:
        e.fail("id", "repeats an earlier action; action ids must be unique")
    for pl in f.get("placements", ()):
        if pl not in placements:
            e.fail("placements", f"names unknown placement {pl!r}; known: {sorted(placements)}")
        if placements[pl].channel != f["channel"]:
            e.fail(
                "placements",
                f"{pl!r} is a {placements[pl].channel} placement, this is a {f['channel']} action",
            )
    if "start" in f and "end" in f and f["end"] <= f["start"]:
        e.fail("end", "must be after 'start'")
    return Action(
        id=f["id"],
        channel=f["channel"],
        placements=f.get("placements", ()),
        value=f["value"],
        cost=f.get("cost", 0.0),
        start=f.get("start"),
        end=f.get("end"),
        segments=f.get("segments", ()),
        consent_needed=f.get("consent_needed", True),
        min_score=_score_rule(e),
        max_per_day=f.get("max_per_day"),
        budget_per_day=f.get("budget_per_day"),
    )


def _array(doc: dict, key: str, path: Path, lines: SourceLines) -> list:
    v = doc.get(key, [])
    if not isinstance(v, list):
        raise CatalogueError(
            f"{path}, line {lines.line_of((), key)}: {key!r} must be written as [[{key}]] tables"
        )
    return v


def read_catalogue(path: str | Path) -> Catalogue:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CatalogueError(
            f"{path}: no such catalogue file; set CADENCE_CATALOGUE to an existing file"
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML: {exc}") from None
    lines = SourceLines(text)
    for key in doc:
        if key not in ("placement", "action", "contact"):
            raise CatalogueError(
                f"{path}, line {lines.line_of((), key)}: unknown top-level entry {key!r}; "
                "the catalogue holds [[placement]], [[action]] and [contact.<channel>]"
            )
    placements: dict[str, Placement] = {}
    for i, p in enumerate(_array(doc, "placement", path, lines)):
        e = _Entry(path, lines, ("placement", i), _name("placement", i, p), p)
        placement = _placement(e)
        if placement.id in placements:
            e.fail("id", "repeats an earlier placement; placement ids must be unique")
        placements[placement.id] = placement
    actions: dict[str, Action] = {}
    for i, a in enumerate(_array(doc, "action", path, lines)):
        action = _action(_Entry(path, lines, ("action", i), _name("action", i, a), a), placements, actions)
        actions[action.id] = action
    for i, p in enumerate(doc.get("placement", [])):
        d = placements[p["id"]].default_action
        if d != NO_ACTION and (d not in actions or p["id"] not in actions[d].placements):
            _Entry(path, lines, ("placement", i), _name("placement", i, p), p).fail(
                "default_action",
                f"names {d!r}, which is not an action of this placement; use one or {NO_ACTION!r}",
            )
    contact: dict[str, ContactPolicy] = {}
    contact_doc = _Entry(path, lines, ("contact",), "[contact]", doc.get("contact", {}))
    for channel in contact_doc.doc:
        if channel not in CHANNELS:
            contact_doc.fail(channel, f"is not a channel; use [contact.<channel>] with one of {CHANNELS}")
        e = _Entry(path, lines, ("contact", channel), f"[contact.{channel}]", contact_doc.doc[channel])
        contact[channel] = ContactPolicy(**e.fields(_CONTACT_FIELDS))
    return Catalogue(placements, actions, contact)
