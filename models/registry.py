"""The model set the engine loads: propensity, churn and value, their online metrics and snapshots.

- ``learn_one(sample)`` routes a :class:`ModelSample` to its model by name (a registry dict), scores it
  first (progressive validation: predict, then learn), updates that model's metrics and drift detector.
- ``score(features, actions)`` returns flat, named scores for CRM/sales tools and the decision policy:
  ``churn_risk`` (probability), ``value`` (expected revenue of a conversion, in revenue units) and
  ``propensity:<action>`` (conversion probability if that action is shown).
- ``compile()`` freezes the scores into a numpy :class:`CompiledScorer` for the hot path (same numbers,
  several times cheaper, and batches cost well under 1 µs a row).
- ``metrics()`` returns ``{model: {metric: number}}`` for logs and Prometheus gauges.
- ``snapshot()`` / ``ModelSet.restore(data)``: bytes with a magic header, the snapshot format, the model
  version (learning steps) and the River version; a restored set predicts exactly as the original.
  Snapshots are pickles: restore only snapshots your own learners wrote.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import river

from features.context import CONTEXT_NAMES
from models.churn import ChurnLabel, ChurnModel
from models.compiled import CompiledScorer
from models.monitor import ProgressiveMonitor
from models.propensity import PropensityModel
from models.value import ValueModel

SNAPSHOT_MAGIC = b"CADENCE-MODELS\n"
# 2: the context's history block is weighted by features.context.HISTORY_WEIGHT (format 1 learned it unweighted)
SNAPSHOT_FORMAT = 2


@dataclass(frozen=True, slots=True)
class ModelSample:
    """One labelled example for one model. ``features`` come from ``models.inputs.model_features``."""

    model: str  # "propensity", "churn" or "value"
    features: dict[str, float]
    target: float  # converted 0/1, churned 0/1, or revenue
    ts: float  # event time at which the label became known
    action: str | None = None  # the offer shown (propensity only)

    @classmethod
    def conversion(
        cls, features: dict[str, float], action: str, converted: bool | int, ts: float
    ) -> ModelSample:
        return cls("propensity", features, float(converted), ts, action)

    @classmethod
    def churn(cls, features: dict[str, float], churned: bool | int, ts: float) -> ModelSample:
        return cls("churn", features, float(churned), ts)

    @classmethod
    def from_churn_label(cls, label: ChurnLabel) -> ModelSample:
        return cls("churn", label.features, float(label.churned), label.labelled_ts)

    @classmethod
    def revenue(cls, features: dict[str, float], revenue: float, ts: float) -> ModelSample:
        return cls("value", features, float(revenue), ts)


@dataclass(frozen=True, slots=True)
class _Adapter:
    """How the set predicts, learns and measures the error of one kind of model on a sample."""

    predict: Callable[[Any, ModelSample], float]
    learn: Callable[[Any, ModelSample], None]
    error: Callable[[float, float], float]


def _needs_action(sample: ModelSample) -> str:
    if not sample.action:
        raise ValueError(
            "a propensity sample needs the action that was shown; build it with ModelSample.conversion"
        )
    return sample.action


ADAPTERS: dict[str, _Adapter] = {
    "propensity": _Adapter(
        predict=lambda m, s: m.predict_one(s.features, _needs_action(s)),
        learn=lambda m, s: m.learn_one(s.features, _needs_action(s), s.target),
        error=lambda y, p: abs(y - p),
    ),
    "churn": _Adapter(
        predict=lambda m, s: m.predict_one(s.features),
        learn=lambda m, s: m.learn_one(s.features, s.target),
        error=lambda y, p: abs(y - p),
    ),
    "value": _Adapter(
        predict=lambda m, s: m.predict_one(s.features),
        learn=lambda m, s: m.learn_one(s.features, s.target),
        error=lambda y, p: abs(math.log1p(max(y, 0.0)) - math.log1p(max(p, 0.0))),
    ),
}


class ModelSet:
    """Propensity, churn and value models with per-model progressive metrics and drift counts."""

    def __init__(
        self,
        propensity: PropensityModel | None = None,
        churn: ChurnModel | None = None,
        value: ValueModel | None = None,
        auc_window: int = 10_000,
        drift_delta: float = 0.002,
    ) -> None:
        self.propensity = propensity if propensity is not None else PropensityModel()
        self.churn = churn if churn is not None else ChurnModel()
        self.value = value if value is not None else ValueModel()
        self.auc_window = auc_window
        self.drift_delta = drift_delta
        self._models: dict[str, Any] = {
            "propensity": self.propensity,
            "churn": self.churn,
            "value": self.value,
        }
        self._monitors = {
            name: ProgressiveMonitor(model.task, auc_window=auc_window, drift_delta=drift_delta)
            for name, model in self._models.items()
        }
        self._version = 0

    @property
    def version(self) -> int:
        """Learning steps applied: identifies the models a score was made with."""
        return self._version

    # -- learning -------------------------------------------------------------------------------------
    def learn_one(self, sample: ModelSample) -> float:
        """Predict, record metrics and drift, then learn. Returns the prediction made before learning."""
        try:
            adapter = ADAPTERS[sample.model]
            model = self._models[sample.model]
        except KeyError:
            raise ValueError(
                f"unknown model {sample.model!r} in sample; choose one of {sorted(ADAPTERS)}"
            ) from None
        if not math.isfinite(sample.target):
            raise ValueError(
                f"sample target must be finite, got {sample.target!r} for model {sample.model!r}"
            )
        prediction = adapter.predict(model, sample)
        adapter.learn(model, sample)  # validates the target before any metric moves
        self._monitors[sample.model].update(
            sample.target, prediction, adapter.error(sample.target, prediction), sample.ts
        )
        self._version += 1
        return prediction

    def learn_many(self, samples: Iterable[ModelSample]) -> int:
        """Learn samples in order (each one is scored before it is learned); returns how many."""
        n = 0
        for sample in samples:
            self.learn_one(sample)
            n += 1
        return n

    # -- scoring --------------------------------------------------------------------------------------
    def score(self, features: dict[str, float], actions: Iterable[str] = ()) -> dict[str, float]:
        """Named scores for one customer: ``churn_risk``, ``value`` and ``propensity:<action>`` per action."""
        out = {"churn_risk": self.churn.predict_one(features), "value": self.value.predict_one(features)}
        for action, p in self.propensity.predict_many(features, actions).items():
            out[f"propensity:{action}"] = p
        return out

    def compile(self, names: Sequence[str] = CONTEXT_NAMES) -> CompiledScorer:
        """A frozen numpy scorer for inputs laid out as ``names``.

        The default reads ``features.context.build_context`` vectors as they are (the ``bias`` column gets
        coefficient 0; the models learn their own intercepts). Pass other names if the models learned
        more features (e.g. ``models.inputs.PROFILE_MODEL_NAMES``); it raises when a learned one is missing.
        """
        pooled, offers = self.propensity.affines(names)
        parts = [self.churn.affine(names), self.value.log_affine(names), pooled, *offers.values()]
        return CompiledScorer(
            names=tuple(names),
            version=self._version,
            coef=_read_only(np.vstack([p.coef for p in parts])),
            offset=_read_only(np.array([p.offset for p in parts])),
            offer_rows={a: 3 + i for i, a in enumerate(offers)},
            smearing_factor=self.value.smearing_factor,
        )

    def samples(self) -> dict[str, int]:
        """Samples learned per model (cheap: no metric is computed)."""
        return {name: monitor.n_samples for name, monitor in self._monitors.items()}

    def drifts(self) -> dict[str, int]:
        """Error increases detected per model (cheap)."""
        return {name: monitor.n_drifts for name, monitor in self._monitors.items()}

    def metrics(self) -> dict[str, dict[str, Any]]:
        """``{model: {metric: value}}``: progressive metrics, samples, drifts and last drift ts per model."""
        return {name: monitor.as_dict() for name, monitor in self._monitors.items()}

    # -- snapshots ------------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Header pickle (format, version, river version), then the models pickle, after a magic line."""
        header = {"format": SNAPSHOT_FORMAT, "version": self._version, "river": river.__version__}
        out = io.BytesIO()
        out.write(SNAPSHOT_MAGIC)
        pickle.dump(header, out, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(self, out, protocol=pickle.HIGHEST_PROTOCOL)
        return out.getvalue()

    @staticmethod
    def snapshot_version(data: bytes) -> int:
        """The model version (learning steps) a snapshot holds."""
        return _read_header(io.BytesIO(data))["version"]

    @classmethod
    def restore(cls, data: bytes) -> ModelSet:
        stream = io.BytesIO(data)
        _read_header(stream)
        models = pickle.load(stream)
        if not isinstance(models, cls):
            raise ValueError(f"snapshot holds a {type(models).__name__}, not a {cls.__name__}")
        return models


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _read_header(stream: io.BytesIO) -> dict[str, Any]:
    if stream.read(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
        raise ValueError(
            "not a cadence model snapshot (missing header); pass bytes written by ModelSet.snapshot()"
        )
    header = pickle.load(stream)
    if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
        found = header.get("format") if isinstance(header, dict) else header
        raise ValueError(
            f"snapshot format {found!r} is not {SNAPSHOT_FORMAT}, the one this code reads; "
            "restore it with the cadence version that wrote it, or retrain"
        )
    if header.get("river") != river.__version__:
        raise ValueError(
            f"snapshot written with river {header.get('river')}, "
            f"this process runs river {river.__version__}; "
            "River models are not portable across versions: install the same river version or retrain"
        )
    return header
