"""A read view of one user's feature hash, evaluated at an event time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from features.windows import WINDOW_NAMES, WINDOWS, estimate, parse_cell

# Short counter names (as stored) -> readable names (as shown in profiles and traces).
COUNTER_NAMES = {
    "pv": "page_views",
    "ck": "clicks",
    "cv": "conversions",
    "rv": "revenue",
    "er": "email_requests",
    "eo": "email_opens",
    "ec": "email_clicks",
    "us": "unsubscribes",
    "ar": "ad_requests",
    "ac": "ad_clicks",
}
WINDOW_SIZES = dict(WINDOWS)


@dataclass(slots=True)
class UserState:
    user_id: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.fields)

    def count(self, counter: str, window: str, at: float) -> float:
        return estimate(parse_cell(self.fields.get(counter + window)), at, WINDOW_SIZES[window])

    def last_ts(self, counter: str) -> float | None:
        raw = self.fields.get(f"t:{counter}")
        return float(raw) if raw is not None else None

    def age(self, counter: str, at: float) -> float | None:
        last = self.last_ts(counter)
        return None if last is None else max(0.0, at - last)

    @property
    def device(self) -> str | None:
        return self.fields.get("dev")

    @property
    def segment(self) -> str | None:
        return self.fields.get("seg")

    @property
    def consent(self) -> bool | None:
        raw = self.fields.get("cons")
        return None if raw is None else raw == "1"

    @property
    def first_seen(self) -> float | None:
        raw = self.fields.get("fs")
        return float(raw) if raw is not None else None

    def features(self, at: float) -> dict[str, dict[str, Any]]:
        """Every windowed feature with its value and its age in seconds (None: never seen)."""
        out: dict[str, dict[str, Any]] = {}
        for short, name in COUNTER_NAMES.items():
            last = self.last_ts(short) if short != "rv" else self.last_ts("cv")
            age = None if last is None else round(max(0.0, at - last), 3)
            for suffix, _ in WINDOWS:
                if short + suffix in self.fields:
                    value = round(self.count(short, suffix, at), 4)
                    out[f"{name}_{WINDOW_NAMES[suffix]}"] = {"value": value, "age_s": age}
        return out
