"""Conversion propensity per offer: P(converted | features, offer shown), learned online with River.

Layout (all River parts): one ``preprocessing.StandardScaler`` shared by every offer, then one
``linear_model.LogisticRegression`` per offer, created the first time the offer is learned, plus a pooled
logistic regression learned on every sample whatever the offer. The per-offer models carry the
interactions that matter here (an offer that suits loyal mobile users and not new desktop ones), which
an offer one-hot in one linear model cannot express. An offer with fewer than ``warmup`` samples of its
own is scored by the pooled model, so new offers get a sensible base rate instead of 0.5.

Scoring k offers costs one scaler transform plus k dot products (see load_tests/bench_models.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from river import linear_model, optim, preprocessing

from models.linear import Affine, affine_of


def _logistic(lr: float, intercept_lr: float, l2: float) -> linear_model.LogisticRegression:
    return linear_model.LogisticRegression(optimizer=optim.SGD(lr), intercept_lr=intercept_lr, l2=l2)


class PropensityModel:
    """``learn_one(features, action, converted)``; ``predict_many(features, actions) -> {action: p}``."""

    task = "binary"

    def __init__(
        self, lr: float = 0.02, intercept_lr: float = 0.02, l2: float = 0.0, warmup: int = 50
    ) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 samples, got {warmup}")
        self.lr = lr
        self.intercept_lr = intercept_lr
        self.l2 = l2
        self.warmup = warmup
        self._scaler = preprocessing.StandardScaler()
        self._pooled = _logistic(lr, intercept_lr, l2)
        self._per_offer: dict[str, linear_model.LogisticRegression] = {}
        self._counts: dict[str, int] = {}

    @property
    def actions(self) -> list[str]:
        """Offers with a model of their own (learned at least once)."""
        return list(self._per_offer)

    def samples(self, action: str) -> int:
        return self._counts.get(action, 0)

    def _model_for(self, action: str) -> linear_model.LogisticRegression:
        """The offer's own model once it has ``warmup`` samples (and at least one: with ``warmup`` 0 an unseen
        offer has no model yet), else the pooled one; ``affines`` makes the same choice for the compiled scorer."""
        own = self._per_offer.get(action)
        if own is not None and self._counts[action] >= self.warmup:
            return own
        return self._pooled

    def predict_one(self, features: dict[str, float], action: str) -> float:
        scaled = self._scaler.transform_one(features)
        return self._model_for(action).predict_proba_one(scaled)[True]

    def predict_many(self, features: dict[str, float], actions: Iterable[str]) -> dict[str, float]:
        scaled = self._scaler.transform_one(features)
        return {a: self._model_for(a).predict_proba_one(scaled)[True] for a in actions}

    def learn_one(self, features: dict[str, float], action: str, converted: float) -> None:
        if converted not in (0, 1):
            raise ValueError(f"converted must be 0 or 1 (or a bool), got {converted!r}")
        self._scaler.learn_one(features)
        scaled = self._scaler.transform_one(features)
        y = bool(converted)
        self._pooled.learn_one(scaled, y)
        model = self._per_offer.get(action)
        if model is None:
            model = self._per_offer[action] = _logistic(self.lr, self.intercept_lr, self.l2)
        model.learn_one(scaled, y)
        self._counts[action] = self._counts.get(action, 0) + 1

    def affines(self, names: Sequence[str]) -> tuple[Affine, dict[str, Affine]]:
        """Logits as affine maps of raw inputs: the pooled model, and each offer past its warm-up."""
        warm = {a: m for a, m in self._per_offer.items() if self._counts[a] >= self.warmup}
        return affine_of(self._scaler, self._pooled, names), {
            a: affine_of(self._scaler, m, names) for a, m in warm.items()
        }
