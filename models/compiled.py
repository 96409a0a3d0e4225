"""A frozen, vectorised copy of a ModelSet's scores for the hot path: one matrix product for everything.

Every model here is ``StandardScaler | linear``, so each score is a link function of an affine map of the
raw inputs (models/linear.py). ``ModelSet.compile()`` stacks those maps into one matrix, so scoring a
context vector, or a whole batch of them, is one ``X @ A.T`` plus the links. The numbers equal
``ModelSet.score`` up to float rounding (tests check 1e-9).

Deciders load a snapshot, compile it once, and score with it until the next snapshot; learning stays on
the River objects. A compiled scorer never changes. ``to_json`` / ``from_json`` carry it between workers
as plain numbers (no pickle: a worker can load a scorer another process wrote without trusting code).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from models.value import MAX_LOG_RESIDUAL

JSON_FORMAT = 1
CLAMP = 30.0  # River's sigmoid returns exactly 0 / 1 beyond ±30


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = 1.0 / (1.0 + np.exp(-np.clip(z, -CLAMP, CLAMP)))
    out[z < -CLAMP] = 0.0
    out[z > CLAMP] = 1.0
    return out


def _sigmoid_one(z: float) -> float:
    if z < -CLAMP:
        return 0.0
    if z > CLAMP:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True, slots=True)
class CompiledScorer:
    """Row 0: churn logit, row 1: log1p value, row 2: pooled propensity logit, rows 3+: warm offers."""

    names: tuple[str, ...]  # input layout: a vector (or batch rows) holds these, in this order
    version: int  # the ModelSet version it was compiled from
    coef: np.ndarray  # (rows, len(names))
    offset: np.ndarray  # (rows,)
    offer_rows: Mapping[str, int]  # warm offer -> row; any other offer uses the pooled row (2)
    smearing_factor: float

    def _rows_for(self, actions: Sequence[str]) -> list[int]:
        return [self.offer_rows.get(a, 2) for a in actions]

    def _vector(self, x: np.ndarray | Mapping[str, float]) -> np.ndarray:
        if isinstance(x, Mapping):
            # a 0 for a missing name is not what River does (it skips the key: the feature's mean after scaling):
            # refuse rather than score wrong, unless no row reads it (e.g. the constant bias the models drop)
            missing = [n for i, n in enumerate(self.names) if n not in x and self.coef[:, i].any()]
            if missing:
                raise ValueError(f"input lacks {len(missing)} of the scorer's features: {missing[:5]}; pass every "
                                 "name in CompiledScorer.names (or the engine's full context vector)")
            return np.fromiter((x.get(n, 0.0) for n in self.names), dtype=float, count=len(self.names))
        x = np.asarray(x, dtype=float)
        if x.shape[-1] != len(self.names):
            raise ValueError(
                f"input has {x.shape[-1]} columns, this scorer reads {len(self.names)} laid out as "
                f"CompiledScorer.names ({self.names[:3]}...)"
            )
        return x

    def score_batch(self, contexts: np.ndarray, actions: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """(n, len(names)) -> ``{"churn_risk": (n,), "value": (n,), "propensity:<a>": (n,)}``."""
        actions = list(actions)
        rows = [0, 1, *self._rows_for(actions)]
        z = np.atleast_2d(self._vector(contexts)) @ self.coef[rows].T + self.offset[rows]
        log_value = np.minimum(z[:, 1], MAX_LOG_RESIDUAL)
        out = {
            "churn_risk": _sigmoid(z[:, 0]),
            "value": np.maximum(0.0, np.exp(log_value) * self.smearing_factor - 1.0),
        }
        p = _sigmoid(z[:, 2:])
        for j, action in enumerate(actions):
            out[f"propensity:{action}"] = p[:, j]
        return out

    def score(
        self, context: np.ndarray | Mapping[str, float], actions: Iterable[str] = ()
    ) -> dict[str, float]:
        """One customer: same keys and (to rounding) the same numbers as ``ModelSet.score``."""
        z = (self.coef @ self._vector(context) + self.offset).tolist()  # every row: cheaper than picking
        return self.from_logits(z, actions)

    def logits(self, contexts: np.ndarray) -> list[list[float]]:
        """Every row of a batch (n, len(names)) through every affine map in one product, as lists for
        ``from_logits``: a batch of decisions pays one numpy call instead of one per customer."""
        return (np.atleast_2d(self._vector(contexts)) @ self.coef.T + self.offset).tolist()

    def from_logits(self, z: Sequence[float], actions: Iterable[str] = ()) -> dict[str, float]:
        """``score`` from one row of ``logits`` (the affine maps of one customer, every row of ``coef``)."""
        out = {
            "churn_risk": _sigmoid_one(z[0]),
            "value": max(0.0, math.exp(min(z[1], MAX_LOG_RESIDUAL)) * self.smearing_factor - 1.0),
        }
        rows = self.offer_rows
        for action in actions:
            out[f"propensity:{action}"] = _sigmoid_one(z[rows.get(action, 2)])
        return out

    def to_json(self) -> bytes:
        """Plain JSON numbers: ``CompiledScorer.from_json`` gives back a scorer with identical scores."""
        return orjson.dumps({
            "format": JSON_FORMAT, "names": list(self.names), "version": self.version,
            "coef": self.coef.tolist(), "offset": self.offset.tolist(), "offer_rows": dict(self.offer_rows),
            "smearing_factor": self.smearing_factor,
        })

    @classmethod
    def from_json(cls, raw: bytes) -> CompiledScorer:
        doc = orjson.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
            raise ValueError(
                f"not a compiled scorer in JSON format {JSON_FORMAT}; write it with CompiledScorer.to_json"
            )
        coef = np.array(doc["coef"], dtype=float).reshape(-1, len(doc["names"]))
        offset = np.array(doc["offset"], dtype=float)
        rows = {str(a): int(r) for a, r in doc["offer_rows"].items()}
        if len(offset) != len(coef) or len(coef) < 3 or any(not 3 <= r < len(coef) for r in rows.values()):
            raise ValueError(f"compiled scorer JSON is inconsistent: {len(coef)} rows, {len(offset)} offsets, "
                             f"offer rows {sorted(rows.values())[:5]}; write it again with CompiledScorer.to_json")
        coef.setflags(write=False)
        offset.setflags(write=False)
        return cls(tuple(doc["names"]), int(doc["version"]), coef, offset, rows, float(doc["smearing_factor"]))
