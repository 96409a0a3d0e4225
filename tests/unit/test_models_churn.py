"""Churn labels from event time, and the churn model on a stream whose truth is known."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from models.churn import ChurnLabeler, ChurnModel, churn_label
from models.synthetic import SyntheticStream

H = 10.0  # horizon in these tables (seconds of event time)


@pytest.mark.parametrize(
    ("last", "now", "active_now", "expected"),
    [
        (100.0, 105.0, True, 0),  # came back within the horizon
        (100.0, 110.0, True, 0),  # exactly at the horizon still counts as back
        (100.0, 110.5, True, 1),  # came back, but after a silence longer than the horizon
        (100.0, 110.5, False, 1),  # the watermark passed the horizon: churned
        (100.0, 105.0, False, None),  # not known yet
        (100.0, 100.0, True, None),  # the same instant says nothing about afterwards
        (100.0, 90.0, True, None),  # a late event from before the snapshot
    ],
)
def test_churn_label_rule(last, now, active_now, expected):
    assert churn_label(last, now, H, active_now) == expected


def test_labeler_resolves_returns_samples_busy_users_and_expires_silent_ones():
    lab = ChurnLabeler(horizon_s=H, sample_every_s=4.0)
    assert lab.observe("u", 0.0, {"f": 0.0}) == []
    assert lab.observe("u", 1.0, {"f": 1.0}) == []  # within sample_every: refreshes the snapshot
    assert lab.observe("u", 0.5, {"f": 9.0}) == []  # late event: ignored
    [back] = lab.observe("u", 5.0, {"f": 5.0})  # 4 s after the slot began: label 0 for the t=1 state
    assert (back.churned, back.observed_ts, back.labelled_ts, back.features) == (0, 1.0, 5.0, {"f": 1.0})
    assert lab.observe("v", 6.0, {"f": 6.0}) == []
    assert lab.advance(15.0) == []  # u silent 10 s: not more than the horizon yet
    [gone] = lab.advance(15.5)
    assert (gone.user_id, gone.churned, gone.observed_ts, gone.features) == ("u", 1, 5.0, {"f": 5.0})
    assert len(lab) == 1
    [late_return] = lab.observe("v", 30.0, {"f": 30.0})  # advance was not called: the return labels it
    assert (late_return.user_id, late_return.churned) == ("v", 1)
    lab.forget("v")
    assert len(lab) == 0 and lab.advance(1e9) == []


def test_labeler_copies_features():
    lab = ChurnLabeler(horizon_s=H, sample_every_s=0.0)
    features = {"f": 1.0}
    lab.observe("u", 0.0, features)
    features["f"] = 2.0
    [label] = lab.advance(100.0)
    assert label.features == {"f": 1.0}


def test_labeler_refuses_bad_settings():
    with pytest.raises(ValueError, match="horizon_s > 0"):
        ChurnLabeler(horizon_s=0)


def _auc(y: list[int], p: list[float]) -> float:
    y_arr, ranks = np.asarray(y), np.empty(len(p))
    ranks[np.argsort(p)] = np.arange(1, len(p) + 1)
    pos = y_arr.sum()
    return float((ranks[y_arr == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def test_churn_model_ranks_risk_on_a_known_stream():
    stream, model = SyntheticStream(seed=11), ChurnModel()
    ys, preds = [], []
    for i in range(8000):
        features, churned, _ = stream.churn()
        before = copy.deepcopy(features)
        if i >= 4000:
            ys.append(churned)
            preds.append(model.predict_one(features))
        model.learn_one(features, churned)
        assert features == before
    assert 300 < sum(ys) < 3700  # both classes well represented
    assert _auc(ys, preds) > 0.70  # truth reaches ~0.78 on this stream; 0.5 is chance
    with pytest.raises(ValueError, match="churned must be 0 or 1"):
        model.learn_one({}, 0.5)
