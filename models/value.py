"""Customer value: expected revenue of the customer's next conversion, given their features now.

Revenue is heavy-tailed, so the River pipeline ``StandardScaler | TargetStandardScaler(LinearRegression)``
learns ``log1p(revenue)``; that keeps one large order from throwing the weights. Turning a log-scale
prediction back with ``expm1`` gives (roughly) the median, which under-states the mean that
``p × value`` arbitration needs, so the prediction is multiplied by Duan's smearing factor
``E[exp(residual)]``, tracked online as an exponentially weighted mean of recent residuals.

Learn it on conversions (features at the conversion, revenue). Multiply by a propensity for the expected
revenue of an offer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from river import linear_model, optim, preprocessing, stats

from models.linear import Affine, affine_of

MAX_LOG_RESIDUAL = 20.0  # exp(20) ≈ 5e8: bounds the smearing update against one absurd revenue


class ValueModel:
    """``learn_one(features, revenue)``; ``predict_one(features)`` -> expected revenue (same unit)."""

    task = "regression"

    def __init__(
        self, lr: float = 0.003, intercept_lr: float = 0.01, l2: float = 0.0, smearing_alpha: float = 0.01
    ):
        if not 0.0 < smearing_alpha <= 1.0:
            raise ValueError(f"smearing_alpha must be in (0, 1], got {smearing_alpha}")
        self.lr = lr
        self.intercept_lr = intercept_lr
        self.l2 = l2
        self.smearing_alpha = smearing_alpha
        self._pipeline = preprocessing.StandardScaler() | preprocessing.TargetStandardScaler(
            regressor=linear_model.LinearRegression(optimizer=optim.SGD(lr), intercept_lr=intercept_lr, l2=l2)
        )
        self._smearing = stats.EWMean(fading_factor=smearing_alpha)
        self._n = 0  # residuals in the smearing estimate
        self._seen = 0  # samples learned

    def predict_log(self, features: dict[str, float]) -> float:
        """Predicted ``log1p(revenue)`` (about the median)."""
        return float(self._pipeline.predict_one(features))

    @property
    def smearing_factor(self) -> float:
        """``E[exp(residual)]`` in log1p space; 1 before any sample."""
        return self._smearing.get() if self._n else 1.0

    def predict_one(self, features: dict[str, float]) -> float:
        log_pred = min(self.predict_log(features), MAX_LOG_RESIDUAL)
        return max(0.0, math.exp(log_pred) * self.smearing_factor - 1.0)

    def learn_one(self, features: dict[str, float], revenue: float) -> None:
        if not (math.isfinite(revenue) and revenue >= 0.0):
            raise ValueError(f"revenue must be a finite amount >= 0, got {revenue!r}")
        target = math.log1p(revenue)
        if self._seen:  # before any sample the prediction is 0, not an estimate: its residual says nothing
            residual = target - self.predict_log(features)
            self._smearing.update(math.exp(max(-MAX_LOG_RESIDUAL, min(residual, MAX_LOG_RESIDUAL))))
            self._n += 1
        self._seen += 1
        self._pipeline.learn_one(features, target)

    def log_affine(self, names: Sequence[str]) -> Affine:
        """``predict_log`` as an affine map of raw inputs (target scaling folded in)."""
        scaler, target_scaler = self._pipeline.steps.values()
        std = affine_of(scaler, target_scaler.regressor, names)
        sd, mean = target_scaler.var.get() ** 0.5, target_scaler.var.mean.get()
        return Affine(std.coef * sd, std.offset * sd + mean)
