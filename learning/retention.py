"""Which snapshot versions to keep: the newest ones, plus older ones thinned by age.

Versions come every ``CADENCE_SNAPSHOT_INTERVAL_S`` while something is learned, so keeping only the newest N
covers N intervals (20 × 30 s = 10 minutes): a bad change noticed an hour or a day later could not be rolled
back. ``kept`` keeps the ``newest`` versions, the newest version of each of the last ``hourly`` hours and of each
of the last ``daily`` days (UTC hours and days of the versions' ``created_at``: the wall clock, for people
choosing a rollback point), and the versions ``pinned`` (a pending rollback's).

Hours and days are fixed buckets, not ages: the newest version of a past hour stays the newest of that hour, so
trimming again later never needs a version an earlier trim deleted (the same versions survive whether the
leader trims at every save or once).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

HOUR_S = 3600
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class Retention:
    newest: int = 20  # CADENCE_SNAPSHOTS_KEPT
    hourly: int = 24  # CADENCE_SNAPSHOTS_HOURLY: hours
    daily: int = 7  # CADENCE_SNAPSHOTS_DAILY: days

    def __post_init__(self) -> None:
        if self.newest < 1 or self.hourly < 0 or self.daily < 0:
            raise ValueError(f"retention needs newest >= 1, hourly and daily >= 0, got {self}")

    @property
    def most(self) -> int:
        """The most versions kept, a pending rollback's version included."""
        return self.newest + self.hourly + self.daily + 1

    def describe(self) -> str:
        parts = [f"the newest {self.newest}"]
        if self.hourly:
            parts.append(f"the newest of each of the last {self.hourly} hours")
        if self.daily:
            parts.append(f"the newest of each of the last {self.daily} days")
        return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def kept(versions: Iterable[tuple[int, float]], now: float, rule: Retention,
         pinned: Collection[int] = ()) -> dict[int, str]:
    """``versions``: (version, created_at). Returns the versions to keep, each with why (``newest``,
    ``rollback``, ``hourly``, ``daily``); the rest can be deleted. A version's bucket is its UTC hour (day);
    "the last n hours" are the current hour and the n - 1 before it. Several versions in one hour: the highest
    number (the order they were saved in, whatever the writers' clocks say) stands for it."""
    points = sorted(versions, reverse=True)
    out: dict[int, str] = {v: "newest" for v, _ in points[: rule.newest]}
    for v, _ in points:
        if v in pinned:
            out.setdefault(v, "rollback")
    for width, count, why in ((HOUR_S, rule.hourly, "hourly"), (DAY_S, rule.daily, "daily")):
        first = int(now // width) - count + 1  # the oldest bucket still kept
        seen: set[int] = set()
        for v, created in points:  # newest first: the first of each bucket stands for it
            bucket = int(created // width)
            if bucket >= first and bucket not in seen:
                seen.add(bucket)
                out.setdefault(v, why)
    return out
