"""Edge cases of the River models found in review: each test failed before its fix."""

from __future__ import annotations

import pytest

from contracts.decisions import LearningSample
from learning.label_join import JoinConfig, LabelJoin
from models import ModelSample, ModelSet, PropensityModel
from models.monitor import ProgressiveMonitor
from models.synthetic import SyntheticStream

X = [0.1] * 20


def test_warmup_zero_learns_and_scores_an_offer_it_has_never_seen() -> None:
    # warmup=0 counted an offer without samples as warm and looked up its missing model: KeyError on every
    # learn of a new offer (training stopped) and on every score; the compiled scorer used the pooled row.
    stream = SyntheticStream(seed=1)
    models = ModelSet(propensity=PropensityModel(warmup=0))
    features, action, converted, _ = stream.conversion()
    models.learn_one(ModelSample.conversion(features, action, converted, 0.0))
    assert models.samples()["propensity"] == 1
    river = models.score(features, ["brand_new", action])
    compiled = models.compile().score(features, ["brand_new", action])
    for key, value in river.items():
        assert compiled[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_a_conversion_worth_the_click_reward_is_still_a_conversion() -> None:
    # The join told clicks from conversions by value: with click reward 0.1 and value scale 100 every $10 sale
    # was read as a click (no value label, propensity label 0). Rewards carry their type.
    join = LabelJoin(JoinConfig(window_s=3600, grace_s=300), click_reward=0.1, value_scale=100.0)
    join.add([LearningSample("exposure", "d2", "a", X, ts=1000.0)])
    values = join.add([LearningSample("reward", "d2", "a", X, reward=0.1, ts=1500.0, reward_type="conversion")])
    assert [(label.model, label.target) for label in values] == [("value", pytest.approx(10.0))]
    assert [(label.model, label.target) for label in join.advance(10_000.0)] == [("propensity", 1.0)]
    clicked = LabelJoin(JoinConfig(window_s=3600, grace_s=300), click_reward=0.1, value_scale=100.0)
    clicked.add([LearningSample("exposure", "d3", "a", X, ts=1000.0)])
    assert clicked.add([LearningSample("reward", "d3", "a", X, reward=0.1, ts=1500.0, reward_type="click")]) == []
    assert [(label.model, label.target) for label in clicked.advance(10_000.0)] == [("propensity", 0.0)]


def test_auc_is_undefined_while_its_window_holds_one_class() -> None:
    # After a stretch without conversions (a tracking outage) the AUC read 0.0, as if the model had broken.
    monitor = ProgressiveMonitor("binary", auc_window=100)
    for i in range(300):
        y = 1.0 if i < 50 and i % 2 else 0.0
        monitor.update(y, 0.3, 0.3, float(i))
    assert monitor.as_dict()["roc_auc"] is None
    for i in range(300, 320):  # conversions again: defined again
        y = float(i % 2)
        monitor.update(y, 0.8 if y else 0.2, 0.2, float(i))
    assert monitor.as_dict()["roc_auc"] == pytest.approx(1.0)


def test_the_compiled_scorer_refuses_a_mapping_that_lacks_a_feature_it_reads() -> None:
    # A missing name read as 0.0, which is not River's answer (churn 0.22 instead of 0.07 in review).
    stream = SyntheticStream(seed=1)
    models = ModelSet()
    for _ in range(200):
        features, action, converted, _ = stream.conversion()
        models.learn_one(ModelSample.conversion(features, action, converted, 0.0))
    features, action, _, _ = stream.conversion()
    scorer = models.compile()
    partial = {k: v for k, v in features.items() if k != "log_views_24h"}
    with pytest.raises(ValueError, match="log_views_24h"):
        scorer.score(partial, [action])
