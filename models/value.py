"""Customer value: expected revenue of the customer's next conversion, given their features now.

Revenue is heavy-tailed, so the River pipeline ``StandardScaler | TargetStandardScaler(LinearRegression)``
learns ``log1p(revenue)``; that keeps one large order from throwing the weights. Turning a log-scale
prediction back with ``expm1`` gives (roughly) the median, which under-states the mean that
``p × value`` arbitration needs, so the prediction is multiplied by Duan's smearing factor
``E[exp(residual)]``, tracked online as an exponentially weighted mean of recent residuals. Each residual is
first held within ``RESIDUAL_SDS`` of the residuals' own recent spread (at least ``MIN_RESIDUAL_CAP``): a
single valid but absurd order (revenue up to 1e9 passes validation) would otherwise multiply every customer's
value by up to 2e5 for over a thousand conversions (``exp(residual)`` of that order enters the mean at weight
``smearing_alpha``), while orders within the usual spread pass unchanged.

Learn it on conversions (features at the conversion, revenue). Multiply by a propensity for the expected
revenue of an offer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from river import linear_model, optim, preprocessing, stats

from models.linear import Affine, affine_of

MAX_LOG_RESIDUAL = 20.0  # exp(20) ≈ 5e8: bounds a prediction on the log scale
RESIDUAL_SDS = 4.0  # a residual enters the smearing factor held within this many of the recent residuals' RMS
MIN_RESIDUAL_CAP = math.log(10.0)  # ... but never held closer than 10x either way (a young, narrow estimate)


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
        self._residual_sq = stats.EWMean(fading_factor=smearing_alpha)  # recent residuals' mean square (held)
        self._n = 0  # residuals in the smearing estimate
        self._seen = 0  # samples learned

    def __setstate__(self, state: dict[str, object]) -> None:
        if "_residual_sq" not in state:  # a snapshot from before the held residuals: their spread starts afresh
            state["_residual_sq"] = stats.EWMean(fading_factor=float(state["smearing_alpha"]))  # type: ignore[arg-type]
        self.__dict__.update(state)

    def _held(self, residual: float) -> float:
        """``residual`` held within ``RESIDUAL_SDS`` × the recent residuals' RMS (at least ``MIN_RESIDUAL_CAP``)."""
        cap = max(MIN_RESIDUAL_CAP, RESIDUAL_SDS * math.sqrt(self._residual_sq.get())) if self._n else MIN_RESIDUAL_CAP
        return max(-cap, min(residual, cap))

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
            residual = self._held(target - self.predict_log(features))
            self._residual_sq.update(residual * residual)
            self._smearing.update(math.exp(residual))
            self._n += 1
        self._seen += 1
        self._pipeline.learn_one(features, target)

    def log_affine(self, names: Sequence[str]) -> Affine:
        """``predict_log`` as an affine map of raw inputs (target scaling folded in)."""
        scaler, target_scaler = self._pipeline.steps.values()
        std = affine_of(scaler, target_scaler.regressor, names)
        sd, mean = target_scaler.var.get() ** 0.5, target_scaler.var.mean.get()
        return Affine(std.coef * sd, std.offset * sd + mean)
