"""models.inputs: the flat feature dict built from the context vector and the user's profile."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from features.context import CONTEXT_DIM, CONTEXT_NAMES
from models.inputs import CONTEXT_MODEL_NAMES, PROFILE_MODEL_NAMES, model_features, profile_features


def test_vector_becomes_named_floats_without_bias():
    x = np.arange(CONTEXT_DIM, dtype=float)
    out = model_features(x)
    assert "bias" not in out
    assert list(out) == list(CONTEXT_MODEL_NAMES) == [n for n in CONTEXT_NAMES if n != "bias"]
    assert out["tenure"] == float(CONTEXT_NAMES.index("tenure"))
    assert all(type(v) is float for v in out.values())


def test_mapping_is_copied_and_bias_dropped():
    context = {"bias": 1.0, "device_mobile": 1.0, "log_views_1h": 0.5}
    before = copy.deepcopy(context)
    out = model_features(context)
    assert out == {"device_mobile": 1.0, "log_views_1h": 0.5}
    out["device_mobile"] = 7.0
    assert context == before


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (np.zeros(CONTEXT_DIM - 1), "expected 20"),
        ([0.0] * (CONTEXT_DIM + 2), "build_context"),
        (np.r_[np.zeros(CONTEXT_DIM - 1), np.nan], "not finite: \\['tenure'\\]"),
        ({"a": math.inf}, "not finite: \\['a'\\]"),
    ],
)
def test_bad_contexts_are_refused_with_the_reason(context, message):
    with pytest.raises(ValueError, match=message):
        model_features(context)


def test_profile_has_fixed_keys_log_counts_and_recency():
    profile = {
        "page_views_1h": {"value": 3.0, "age_s": 86400.0},
        "page_views_24h": {"value": 10.0, "age_s": 86400.0},
        "revenue_7d": {"value": 99.0, "age_s": 0.0},
        "not_a_known_feature": {"value": 5.0, "age_s": 1.0},
    }
    before = copy.deepcopy(profile)
    out = profile_features(profile)
    assert set(out) == set(PROFILE_MODEL_NAMES)
    assert out["p_page_views_1h"] == pytest.approx(math.log1p(3.0))
    assert out["p_page_views_recency"] == pytest.approx(math.exp(-1.0))
    assert out["p_revenue_recency"] == 1.0
    assert out["p_clicks_7d"] == 0.0 and out["p_clicks_recency"] == 0.0  # never seen: 0, not missing
    assert profile == before


def test_context_and_profile_merge():
    out = model_features(np.zeros(CONTEXT_DIM), profile={})
    assert set(out) == set(CONTEXT_MODEL_NAMES) | set(PROFILE_MODEL_NAMES)
