"""Global counters kept in memory by each worker: action volume and spend per day, placement changes per hour.

Buckets are keyed by event time (UTC day = ts // 86400, hour = ts // 3600), never the wall clock, so a
replay gives the same answers. ``share`` is the part of every limit this worker holds against the counts it
knows of (1 in the engine: the whole limit, against the whole fleet's counts).

A request for a bucket older than those kept (``keep_days`` / ``keep_hours`` behind the newest) cannot
be accounted for and is refused: a very late request never spends a budget twice.

The counts are the fleet's through Redis (``policy/budget_store.py``): every second each worker adds what it
recorded since its last flush (``take_unflushed``; a flush that fails is kept and resent by the store, at most
once applied) to the fleet's totals and raises its counters to them
(``seed``; also at start, so a restarted worker does not spend the day again). A worker's own decisions
count at once; the other workers' within about a second. The bookkeeping here is pure; the I/O is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DAY_S = 86400
HOUR_S = 3600


@dataclass(slots=True)
class _Bucket:
    count: int = 0
    spend: float = 0.0


# (key, bucket number) -> (count, spend): what a worker adds to the fleet's totals, or reads from them
Totals = dict[tuple[str, int], tuple[int, float]]


class _Buckets:
    """Counters per key and time bucket; only the newest ``keep`` buckets per key are kept.

    What ``add`` counts is also kept aside, per bucket, until ``take_unflushed`` hands it over (to be added
    to the fleet's totals); ``seed`` raises buckets to totals read back, without counting them again."""

    def __init__(self, width_s: int, keep: int) -> None:
        self.width_s = width_s
        self.keep = keep
        self._by_key: dict[str, dict[int, _Bucket]] = {}
        self._unflushed: dict[tuple[str, int], _Bucket] = {}

    def _bucket(self, key: str, n: int) -> _Bucket | None:
        """The bucket ``n`` of ``key``, created if new (dropping those it makes too old); None when too old."""
        buckets = self._by_key.setdefault(key, {})
        bucket = buckets.get(n)
        if bucket is None:
            if n <= max(buckets, default=n) - self.keep:
                return None
            # Only a new bucket can make others too old, so the scan runs once per bucket, not per call.
            bucket = buckets[n] = _Bucket()
            newest = max(buckets)
            for old in [k for k in buckets if k <= newest - self.keep]:
                del buckets[old]
        return bucket

    def get(self, key: str, ts: float) -> _Bucket | None:
        """The bucket of ``ts`` (fresh if new), or None when ``ts`` is older than the buckets kept."""
        n = int(ts // self.width_s)
        buckets = self._by_key.setdefault(key, {})
        if n in buckets:
            return buckets[n]
        newest = max(buckets, default=n)
        if n <= newest - self.keep:
            return None
        return _Bucket()

    def add(self, key: str, ts: float, count: int = 1, spend: float = 0.0) -> None:
        n = int(ts // self.width_s)
        bucket = self._bucket(key, n)
        if bucket is None:  # too old: callers ask ``get`` first, which refuses it
            return
        bucket.count += count
        bucket.spend += spend
        pending = self._unflushed.get((key, n))
        if pending is None:
            pending = self._unflushed[(key, n)] = _Bucket()
        pending.count += count
        pending.spend += spend

    def seed(self, totals: Totals, share: float) -> None:
        """Raise each bucket to ``share`` of the fleet's total (counts rounded up: stricter, never looser);
        a bucket already higher (this worker counted more since) keeps its own. Buckets too old are skipped."""
        for (key, n), (count, spend) in sorted(totals.items(), key=lambda kv: kv[0][1]):
            bucket = self._bucket(key, n)
            if bucket is None:
                continue
            bucket.count = max(bucket.count, math.ceil(count * share - 1e-9))
            bucket.spend = max(bucket.spend, spend * share)

    def take_unflushed(self) -> Totals:
        taken = {k: (b.count, b.spend) for k, b in self._unflushed.items()}
        self._unflushed = {}
        return taken


class WorkerBudgets:
    """Per-worker limits: decisions and spend per action per UTC day, changes per placement per hour."""

    def __init__(self, share: float = 1.0, keep_days: int = 3, keep_hours: int = 48) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}; use 1/number of workers")
        if keep_days < 1 or keep_hours < 1:
            raise ValueError("keep_days and keep_hours must be >= 1")
        self.share = share
        self.keep_days = keep_days
        self.keep_hours = keep_hours
        self._actions = _Buckets(DAY_S, keep_days)
        self._changes = _Buckets(HOUR_S, keep_hours)

    def _limit(self, limit: float) -> float:
        return limit * self.share

    def _whole(self, limit: int) -> int:
        """This worker's share of a count limit, rounded down; 1e-9 absorbs the float error of the share
        (49 × (1/49) is 0.99999…, which must give 1, not 0)."""
        return math.floor(self._limit(limit) + 1e-9)

    def action_block(
        self, action_id: str, ts: float, cost: float, max_per_day: int | None, budget_per_day: float | None
    ) -> str | None:
        """'volume_cap' or 'budget' when one more decision for the action would pass a limit, else None."""
        if max_per_day is None and budget_per_day is None:
            return None
        bucket = self._actions.get(action_id, ts)
        if bucket is None:
            return "volume_cap" if max_per_day is not None else "budget"
        if max_per_day is not None and bucket.count + 1 > self._whole(max_per_day):
            return "volume_cap"
        if budget_per_day is not None and bucket.spend + cost > self._limit(budget_per_day) + 1e-9:
            return "budget"
        return None

    def record_action(self, action_id: str, ts: float, cost: float) -> None:
        self._actions.add(action_id, ts, 1, cost)

    def action_usage(self, action_id: str, ts: float) -> tuple[int, float]:
        """(decisions, spend) of the action in the UTC day of ``ts`` on this worker."""
        bucket = self._actions.get(action_id, ts)
        return (bucket.count, bucket.spend) if bucket is not None else (0, 0.0)

    def change_available(self, placement: str, ts: float, max_per_hour: int | None) -> bool:
        if max_per_hour is None:
            return True
        bucket = self._changes.get(placement, ts)
        return bucket is not None and bucket.count + 1 <= self._whole(max_per_hour)

    def take_change(self, placement: str, ts: float) -> None:
        self._changes.add(placement, ts)

    def seed(self, action_totals: Totals, change_totals: Totals) -> None:
        """Take ``share`` of the fleet's totals (read from Redis at start and every second): (action, UTC day)
        -> (decisions, spend) and (placement, hour) -> (changes, 0). A worker that restarts thus does not spend
        the day again, and every worker counts the others' decisions within about a second."""
        self._actions.seed(action_totals, self.share)
        self._changes.seed(change_totals, self.share)

    def take_unflushed(self) -> tuple[Totals, Totals]:
        """(action totals, change totals) recorded since the last call, to add to the fleet's totals."""
        return self._actions.take_unflushed(), self._changes.take_unflushed()
