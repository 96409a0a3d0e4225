"""The model input: one flat ``{name: float}`` dict from the context vector and, optionally, a profile.

Pure functions, cheap enough for the hot path (a few µs for the 20-feature context vector).

- ``context`` is what ``features.context.build_context`` returns (a vector laid out as ``CONTEXT_NAMES``)
  or an equivalent mapping of names to already-scaled floats. The constant ``bias`` is dropped: River's
  linear models learn their own intercept. The values are taken as they are, the history block included
  (the vector carries it weighted by ``features.context.HISTORY_WEIGHT``, to keep it out of the bandit's
  way): every model standardises its inputs, so a constant weight changes nothing it learns, and the
  vector path and the mapping path of ``CompiledScorer`` read the same numbers.
- ``profile`` is optional: what ``UserState.features(at)`` returns, ``{name: {"value", "age_s"}}``. It adds
  a fixed set of keys (every counter × window as ``log1p(count)``, every counter's recency as
  ``exp(-age_s / 1 day)``), so a feature the user never had is 0, not missing (a missing key would be
  read as "the average" by a standard scaler).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features.context import CONTEXT_DIM, CONTEXT_NAMES
from features.state import COUNTER_NAMES
from features.windows import WINDOW_NAMES

DROPPED_NAMES = frozenset({"bias"})
CONTEXT_MODEL_NAMES: tuple[str, ...] = tuple(n for n in CONTEXT_NAMES if n not in DROPPED_NAMES)
_CONTEXT_KEEP = tuple(i for i, n in enumerate(CONTEXT_NAMES) if n not in DROPPED_NAMES)

RECENCY_SCALE_S = 86400.0
PROFILE_COUNT_NAMES: tuple[str, ...] = tuple(
    f"{name}_{window}" for name in COUNTER_NAMES.values() for window in WINDOW_NAMES.values()
)
PROFILE_RECENCY_NAMES: tuple[str, ...] = tuple(f"{name}_recency" for name in COUNTER_NAMES.values())
PROFILE_MODEL_NAMES: tuple[str, ...] = tuple(f"p_{n}" for n in PROFILE_COUNT_NAMES + PROFILE_RECENCY_NAMES)


def _from_vector(context: np.ndarray | Sequence[float]) -> dict[str, float]:
    values = context.tolist() if isinstance(context, np.ndarray) else list(context)
    if len(values) != CONTEXT_DIM:
        raise ValueError(
            f"context vector has {len(values)} values, expected {CONTEXT_DIM} laid out as "
            "features.context.CONTEXT_NAMES; build it with features.context.build_context"
        )
    out = {CONTEXT_NAMES[i]: float(values[i]) for i in _CONTEXT_KEEP}
    _check_finite(out)
    return out


def _from_mapping(context: Mapping[str, float]) -> dict[str, float]:
    out = {str(k): float(v) for k, v in context.items() if k not in DROPPED_NAMES}
    _check_finite(out)
    return out


def _check_finite(values: dict[str, float]) -> None:
    if not all(map(math.isfinite, values.values())):
        bad = sorted(k for k, v in values.items() if not math.isfinite(v))
        raise ValueError(f"model features must be finite numbers; not finite: {bad}. Fix the feature source.")


def profile_features(profile: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``UserState.features(at)`` -> fixed-key dict: ``p_<counter>_<window>`` and ``p_<counter>_recency``."""
    out = dict.fromkeys(PROFILE_MODEL_NAMES, 0.0)
    for name, cell in profile.items():
        key = f"p_{name}"
        if key not in out:
            continue  # a feature this version does not know: ignore rather than grow the model
        value = float(cell.get("value") or 0.0)
        out[key] = math.log1p(max(value, 0.0))
        age = cell.get("age_s")
        if age is not None:
            counter = name.rsplit("_", 1)[0]
            out[f"p_{counter}_recency"] = math.exp(-max(float(age), 0.0) / RECENCY_SCALE_S)
    _check_finite(out)
    return out


def model_features(
    context: np.ndarray | Sequence[float] | Mapping[str, float],
    profile: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """A new ``{name: float}`` dict for the River models; the inputs are never modified."""
    out = _from_mapping(context) if isinstance(context, Mapping) else _from_vector(context)
    if profile is not None:
        out.update(profile_features(profile))
    return out
