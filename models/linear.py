"""A River ``StandardScaler`` followed by a River linear model, folded into one affine map of raw inputs.

``w · ((x - μ) / σ) + b`` equals ``(w / σ) · x + (b - Σ w μ / σ)``: a coefficient row and an offset that
numpy can apply to a whole batch at once. River maps a feature with zero variance to 0, so its
coefficient is 0 here too; a feature the input lacks reads as its mean (it adds nothing), as in River.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from river import preprocessing


@dataclass(frozen=True, slots=True)
class Affine:
    coef: np.ndarray  # one coefficient per input name
    offset: float


def affine_of(scaler: preprocessing.StandardScaler, model: object, names: Sequence[str]) -> Affine:
    """Fold ``scaler | model`` (a River linear model: ``_weights`` and ``intercept``) over ``names``."""
    weights = model._weights.to_dict()  # type: ignore[attr-defined]
    means, variances = scaler.means, scaler.vars
    index = set(names)
    unknown = sorted(
        n for n, w in weights.items() if w != 0.0 and variances.get(n, 0.0) > 0 and n not in index
    )
    if unknown:
        raise ValueError(
            f"the models learned features the compiled input lacks: {unknown[:8]}; "
            "compile with names that include them (ModelSet.compile(names=...))"
        )
    coef = np.zeros(len(names))
    offset = float(model.intercept)  # type: ignore[attr-defined]
    for j, name in enumerate(names):
        var = variances.get(name, 0.0)
        w = weights.get(name, 0.0)
        if var > 0 and w != 0.0:
            coef[j] = w / var**0.5
            offset -= coef[j] * means.get(name, 0.0)
    return Affine(coef, offset)
