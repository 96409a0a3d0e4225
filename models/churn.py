"""Churn risk: P(no activity in the next ``horizon_s`` seconds of event time | the customer's features now).

Labels are delayed by nature, so they come from event time, never the wall clock:

- ``churn_label(last_activity_ts, now_ts, horizon_s, active_now)`` is the rule for one snapshot taken at
  ``last_activity_ts``: 1 (churned) once ``now_ts`` is more than ``horizon_s`` after it, 0 when the same
  customer is active again within the horizon, None while that is not known yet.
- ``ChurnLabeler`` applies the rule to a stream. It keeps one open snapshot per customer: the features at
  their latest activity. A new activity either resolves the snapshot (label 0 if the customer came back
  within the horizon, 1 if later) and opens a new one, or, within ``sample_every_s`` of the snapshot's
  first activity, only refreshes it to the latest features (so a busy customer yields about one label 0
  per ``sample_every_s``, not one per click). ``advance(now_ts)`` (call it with the event-time watermark)
  labels 1 every snapshot whose customer has been silent for more than the horizon. Every churn is
  therefore labelled once, on the customer's last state before the silence; the score reads as
  "the chance that a customer active now is silent for the next horizon".

Memory: one snapshot per customer active within the horizon. Features may be a dict (copied) or an
immutable compact form such as float32 bytes of the context vector (kept as is; the engine uses that, and
keys customers by a digest, never the raw id). ``capacity`` bounds the open snapshots: when full, the
oldest one is dropped unlabelled and counted in ``evicted`` (that drops customers silent the longest, so
a labeller that evicts under-counts churn: size it for the customers active within a horizon, or watch
fewer customers). Late events older than a customer's snapshot are ignored by the labeller; out-of-order
events can delay a label 1 by at most their lateness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from river import linear_model, optim, preprocessing

from models.linear import Affine, affine_of

DAY_S = 86400.0


def churn_label(last_activity_ts: float, now_ts: float, horizon_s: float, active_now: bool) -> int | None:
    """Label of the snapshot taken at ``last_activity_ts``, as far as event time ``now_ts`` tells."""
    gap = now_ts - last_activity_ts
    if gap > horizon_s:
        return 1
    if active_now and gap > 0:
        return 0
    return None


@dataclass(frozen=True, slots=True)
class ChurnLabel:
    """A resolved snapshot: learn ``features`` -> ``churned``."""

    user_id: str
    features: Any  # a copy of the dict observed, or the immutable bytes/tuple as observed
    churned: int
    observed_ts: float  # the activity the features describe
    labelled_ts: float  # the event time at which the label became known


def _copied(features: Mapping[str, float] | bytes | tuple) -> Any:
    if type(features) is bytes:  # the engine's form, immutable: checked first, isinstance(Mapping) is slow
        return features
    return dict(features) if isinstance(features, Mapping) else features


@dataclass(slots=True)
class _Snapshot:
    features: Any
    ts: float  # latest activity
    first_ts: float  # first activity folded into this snapshot (sampling slot start)


class ChurnLabeler:
    """Turns (user, activity ts, features) and the watermark into delayed churn labels."""

    def __init__(
        self, horizon_s: float = 14 * DAY_S, sample_every_s: float = DAY_S, capacity: int | None = None
    ) -> None:
        if horizon_s <= 0 or sample_every_s < 0:
            raise ValueError(f"need horizon_s > 0 and sample_every_s >= 0, got {horizon_s}, {sample_every_s}")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1 customer (or None for no bound), got {capacity}")
        self.horizon_s = horizon_s
        self.sample_every_s = sample_every_s
        self.capacity = capacity
        self._open: OrderedDict[str, _Snapshot] = OrderedDict()  # oldest activity first (roughly)
        self._evicted = 0

    @property
    def evicted(self) -> int:
        """Open snapshots dropped unlabelled because ``capacity`` was reached."""
        return self._evicted

    def __len__(self) -> int:
        return len(self._open)

    def observe(self, user_id: str, ts: float, features: Mapping[str, float] | bytes | tuple) -> list[ChurnLabel]:
        """An activity of ``user_id`` at ``ts``; dict ``features`` are copied, never kept by reference."""
        snap = self._open.get(user_id)
        if snap is not None:
            if ts <= snap.ts:
                return []  # late or duplicate activity: says nothing about the time after the snapshot
            label = churn_label(snap.ts, ts, self.horizon_s, active_now=True)
            if label == 0 and ts - snap.first_ts < self.sample_every_s:
                snap.features = _copied(features)
                snap.ts = ts
                self._open.move_to_end(user_id)
                return []
            del self._open[user_id]
            out = [ChurnLabel(user_id, snap.features, int(label or 0), snap.ts, ts)]
        else:
            out = []
            if self.capacity is not None and len(self._open) >= self.capacity:
                self._open.popitem(last=False)
                self._evicted += 1
        self._open[user_id] = _Snapshot(_copied(features), ts, ts)
        return out

    def advance(self, now_ts: float) -> list[ChurnLabel]:
        """Label 1 every customer silent for more than the horizon at event time ``now_ts``."""
        out: list[ChurnLabel] = []
        while self._open:
            user_id, snap = next(iter(self._open.items()))
            if churn_label(snap.ts, now_ts, self.horizon_s, active_now=False) != 1:
                break
            del self._open[user_id]
            out.append(ChurnLabel(user_id, snap.features, 1, snap.ts, now_ts))
        return out

    def forget(self, user_id: str) -> None:
        """Erasure: drop the customer's open snapshot."""
        self._open.pop(user_id, None)

    def clear(self) -> int:
        """Drop every open snapshot unlabelled (e.g. the customers moved to another worker); returns how many."""
        n = len(self._open)
        self._open.clear()
        return n


class ChurnModel:
    """``StandardScaler | LogisticRegression``: ``learn_one(features, churned)``; ``predict_one(features)``.

    The River pipeline, learned on :class:`ChurnLabel` records.
    """

    task = "binary"

    def __init__(self, lr: float = 0.02, intercept_lr: float = 0.02, l2: float = 0.0) -> None:
        self.lr = lr
        self.intercept_lr = intercept_lr
        self.l2 = l2
        self._pipeline = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(lr), intercept_lr=intercept_lr, l2=l2
        )

    def predict_one(self, features: dict[str, float]) -> float:
        return self._pipeline.predict_proba_one(features)[True]

    def learn_one(self, features: dict[str, float], churned: float) -> None:
        if churned not in (0, 1):
            raise ValueError(f"churned must be 0 or 1 (or a bool), got {churned!r}")
        self._pipeline.learn_one(features, bool(churned))

    def affine(self, names: Sequence[str]) -> Affine:
        """The logit as an affine map of raw inputs (see models/linear.py)."""
        scaler, classifier = self._pipeline.steps.values()
        return affine_of(scaler, classifier, names)
