"""CompiledScorer: the frozen numpy copy of ModelSet.score gives the same numbers, singly and in batches."""

from __future__ import annotations

import numpy as np
import pytest

from features.context import CONTEXT_DIM, CONTEXT_NAMES
from models import ModelSample, ModelSet, model_features
from models.inputs import CONTEXT_MODEL_NAMES, PROFILE_MODEL_NAMES, profile_features
from models.propensity import PropensityModel
from models.synthetic import SyntheticStream

ACTIONS = ["a", "b", "c", "d", "never_seen"]


def _trained(seed: int = 8, n: int = 2_000, warmup: int = 50) -> tuple[ModelSet, SyntheticStream]:
    stream = SyntheticStream(seed=seed)
    models = ModelSet(propensity=PropensityModel(warmup=warmup))
    for i in range(n):
        f, a, y, _ = stream.conversion()
        models.learn_one(ModelSample.conversion(f, a, y, float(i)))
        f, c, _ = stream.churn()
        models.learn_one(ModelSample.churn(f, c, float(i)))
        f, r, _ = stream.revenue()
        models.learn_one(ModelSample.revenue(f, r, float(i)))
    return models, stream


def test_compiled_scores_equal_river_scores_for_vectors_mappings_and_batches():
    models, stream = _trained()
    scorer = models.compile()
    assert scorer.names == tuple(CONTEXT_NAMES) and scorer.version == models.version
    contexts = np.array([stream.context() for _ in range(300)])
    batch = scorer.score_batch(contexts, ACTIONS)
    logits = scorer.logits(contexts)  # the engine's batch path: one product, then a row per customer
    assert len(logits) == len(contexts) and len(logits[0]) == len(scorer.coef)
    for i, x in enumerate(contexts):
        expected = models.score(model_features(x), ACTIONS)
        from_vector = scorer.score(x, ACTIONS)
        from_mapping = scorer.score(model_features(x), ACTIONS)
        from_logits = scorer.from_logits(logits[i], ACTIONS)
        assert from_vector.keys() == expected.keys() == batch.keys() == from_logits.keys()
        for key, value in expected.items():
            assert from_vector[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
            assert from_mapping[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
            assert batch[key][i] == pytest.approx(value, rel=1e-9, abs=1e-12), key
            assert from_logits[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert batch["propensity:never_seen"].std() > 0  # the pooled model, not a constant


def test_cold_offers_use_the_pooled_row_like_river():
    models, stream = _trained(n=400, warmup=150)  # each of 4 offers has ~100 samples: all still cold
    scorer = models.compile()
    assert dict(scorer.offer_rows) == {}
    x = stream.context()
    scores = scorer.score(x, ["a", "b"])
    assert scores["propensity:a"] == scores["propensity:b"]
    assert scores["propensity:a"] == pytest.approx(models.score(model_features(x), ["a"])["propensity:a"])


def test_a_compiled_scorer_is_frozen():
    models, stream = _trained(n=300)
    scorer = models.compile()
    x = stream.context()
    before = scorer.score(x, ACTIONS)
    models.learn_many([ModelSample.churn(model_features(x), 1, 1e6)] * 50)
    assert scorer.score(x, ACTIONS) == before != models.compile().score(x, ACTIONS)
    with pytest.raises(ValueError, match="read-only"):
        scorer.coef[0, 0] = 1.0


def test_compile_refuses_to_drop_learned_features_and_reads_profiles_when_asked():
    stream = SyntheticStream(seed=2)
    models = ModelSet()
    profile = {"page_views_24h": {"value": 4.0, "age_s": 600.0}}
    for i in range(300):
        features = model_features(stream.context(), profile={} if i % 2 else profile)
        models.learn_one(ModelSample.churn(features, i % 3 == 0, float(i)))
    with pytest.raises(ValueError, match="p_page_views_24h"):
        models.compile()
    names = [*CONTEXT_MODEL_NAMES, *PROFILE_MODEL_NAMES]
    scorer = models.compile(names=names)
    features = model_features(stream.context(), profile=profile)
    assert scorer.score(features)["churn_risk"] == pytest.approx(
        models.score(features)["churn_risk"], rel=1e-9
    )
    assert set(profile_features(profile)) <= set(scorer.names)


def test_compiled_scorer_names_a_wrong_width():
    scorer = ModelSet().compile()
    with pytest.raises(ValueError, match=f"reads {CONTEXT_DIM} laid out as CompiledScorer.names"):
        scorer.score(np.zeros(CONTEXT_DIM - 1))
    assert scorer.score(np.zeros(CONTEXT_DIM), ["x"]) == {
        "churn_risk": 0.5,
        "value": 0.0,
        "propensity:x": 0.5,
    }
