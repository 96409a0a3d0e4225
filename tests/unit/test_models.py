"""Propensity and value models, and the ModelSet: progressive metrics, drift, snapshots, inputs kept intact.

Every stream is models.synthetic with a fixed seed, so the truth is known and the results repeat.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from models import ModelSample, ModelSet, PropensityModel, ValueModel
from models.registry import SNAPSHOT_FORMAT, SNAPSHOT_MAGIC
from models.synthetic import SyntheticStream


def _auc(y: list[int], p: list[float]) -> float:
    y_arr, ranks = np.asarray(y), np.empty(len(p))
    ranks[np.argsort(p)] = np.arange(1, len(p) + 1)
    pos = y_arr.sum()
    return float((ranks[y_arr == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def _mixed_samples(stream: SyntheticStream, n: int, start_ts: float = 0.0) -> list[ModelSample]:
    out = []
    for i in range(n):
        ts = start_ts + i
        f, a, y, _ = stream.conversion()
        out.append(ModelSample.conversion(f, a, y, ts))
        f, c, _ = stream.churn()
        out.append(ModelSample.churn(f, c, ts))
        f, r, _ = stream.revenue()
        out.append(ModelSample.revenue(f, r, ts))
    return out


# -- propensity --------------------------------------------------------------------------------------
def test_propensity_ranks_conversions_well_above_chance():
    stream, models = SyntheticStream(seed=3), ModelSet(auc_window=10_000)
    ys, preds, truth = [], [], []
    for i in range(20_000):
        features, action, converted, p_true = stream.conversion()
        prediction = models.learn_one(ModelSample.conversion(features, action, converted, float(i)))
        if i >= 10_000:
            ys.append(converted)
            preds.append(prediction)
            truth.append(p_true)
    positives = sum(ys)
    assert 300 < positives < 9700  # ~500 here: the AUC's standard error is about 0.012
    auc = _auc(ys, preds)
    assert auc > 0.65  # clearly above chance (0.5)
    assert auc > _auc(ys, truth) - 0.05  # and close to what the true probabilities reach (0.74 here)
    # the monitor's rolling AUC covers exactly these last 10,000 predictions
    assert models.metrics()["propensity"]["roc_auc"] == pytest.approx(auc, abs=1e-6)
    # and its log loss beats always answering the base rate
    rate = positives / len(ys)
    base_rate_loss = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    ys_arr, p_arr = np.asarray(ys), np.clip(preds, 1e-12, 1 - 1e-12)
    model_loss = -np.mean(ys_arr * np.log(p_arr) + (1 - ys_arr) * np.log(1 - p_arr))
    assert model_loss < 0.95 * base_rate_loss


def test_propensity_scores_new_offers_with_the_pooled_model_until_warm():
    model = PropensityModel(warmup=3)
    features = {"x": 1.0, "y": 0.0}
    for _ in range(20):
        model.learn_one(features, "old", 0)
    cold = model.predict_many(features, ["old", "new"])
    assert cold["new"] == cold["old"] < 0.5  # pooled base rate, not 0.5
    for _ in range(3):
        model.learn_one(features, "new", 1)
    warm = model.predict_many(features, ["old", "new"])
    assert model.samples("new") == 3 and warm["new"] > 0.5 > warm["old"]
    assert model.predict_one(features, "new") == warm["new"]


# -- value -------------------------------------------------------------------------------------------
def test_value_beats_the_running_mean_and_is_calibrated():
    stream, models = SyntheticStream(seed=5), ModelSet()
    running_sum, model_err, naive_err, revenue_sum, predicted_sum = 0.0, 0.0, 0.0, 0.0, 0.0
    for i in range(12_000):
        features, revenue, _ = stream.revenue()
        prediction = models.learn_one(ModelSample.revenue(features, revenue, float(i)))
        if i >= 4_000:
            model_err += abs(revenue - prediction)
            naive_err += abs(revenue - running_sum / i)
            revenue_sum += revenue
            predicted_sum += prediction
        running_sum += revenue
    assert model_err < 0.85 * naive_err  # ≈ 0.72 on this stream; the truth itself ≈ 0.67
    assert predicted_sum == pytest.approx(
        revenue_sum, rel=0.10
    )  # smearing: predicts the mean, not the median
    assert models.metrics()["value"]["mae"] > 0.0


def test_one_absurd_order_does_not_multiply_every_customers_value():
    """A valid order of 1e9 among orders of about 50 moved every score x224,478 (the smearing factor took
    exp(residual) capped at exp(20)); held within the residuals' spread it moves them by well under 2x."""
    rng = np.random.default_rng(0)

    def order() -> float:
        return float(np.exp(rng.normal(np.log(50.0), 0.5)))

    def features() -> dict[str, float]:
        return {"f": float(rng.random()), "g": float(rng.random())}

    model, probe = ValueModel(), {"f": 0.5, "g": 0.5}
    for _ in range(2_000):
        model.learn_one(features(), order())
    before = model.predict_one(probe)
    assert 40.0 < before < 80.0  # about the mean order (56.5 for a lognormal of median 50, sigma 0.5)
    model.learn_one(features(), 1e9)
    assert model.predict_one(probe) < 2.0 * before
    for _ in range(300):
        model.learn_one(features(), order())
    assert model.predict_one(probe) == pytest.approx(before, rel=0.15)


def test_a_value_model_pickled_before_the_held_residuals_still_loads_and_learns():
    model = ValueModel()
    for i in range(50):
        model.learn_one({"f": i / 50}, 40.0 + i)
    state = dict(model.__dict__)
    del state["_residual_sq"]  # what a snapshot of the earlier version holds
    old = ValueModel.__new__(ValueModel)
    old.__setstate__(state)
    old.learn_one({"f": 0.5}, 1e9)
    assert old.predict_one({"f": 0.5}) < 2.0 * model.predict_one({"f": 0.5})


def test_value_refuses_negative_revenue():
    with pytest.raises(ValueError, match="revenue must be a finite amount >= 0"):
        ValueModel().learn_one({}, -1.0)


# -- drift -------------------------------------------------------------------------------------------
def _drifts(seed: int, change_at: int | None, n: int) -> dict[str, dict]:
    models = ModelSet()
    models.learn_many(_mixed_samples(SyntheticStream(seed=seed, change_at=change_at), n))
    return models.metrics()


def test_drift_fires_soon_after_an_abrupt_change():
    change_at = 6_000
    metrics = _drifts(seed=21, change_at=change_at, n=10_000)
    for name in ("propensity", "churn"):  # value re-learns its level within ~100 samples: no lasting rise
        assert metrics[name]["drifts"] >= 1, name
        assert change_at <= metrics[name]["last_drift_ts"] <= change_at + 1_000, name


@pytest.mark.parametrize("seed", [21, 22])
def test_drift_stays_quiet_on_a_stationary_stream(seed):
    metrics = _drifts(seed=seed, change_at=None, n=10_000)
    assert sum(m["drifts"] for m in metrics.values()) <= 1  # ADWIN δ=0.002: a false alarm is rare
    assert all(m["last_drift_ts"] is None or m["drifts"] for m in metrics.values())


# -- model set ---------------------------------------------------------------------------------------
def test_score_names_every_score():
    models = ModelSet()
    models.learn_many(_mixed_samples(SyntheticStream(seed=1), 300))
    features, _, _, _ = SyntheticStream(seed=2).conversion()
    scores = models.score(features, ["a", "b", "z"])
    assert set(scores) == {"churn_risk", "value", "propensity:a", "propensity:b", "propensity:z"}
    assert all(0.0 < scores[k] < 1.0 for k in scores if k != "value") and scores["value"] > 0.0
    assert models.score(features).keys() == {"churn_risk", "value"}


def test_metrics_are_plain_numbers_per_model():
    models = ModelSet()
    assert models.metrics()["propensity"]["roc_auc"] is None  # undefined before both classes were seen
    models.learn_many(_mixed_samples(SyntheticStream(seed=1), 500))
    metrics = models.metrics()
    assert set(metrics["propensity"]) == {
        "log_loss",
        "roc_auc",
        "samples",
        "error_window_mean",
        "drifts",
        "last_drift_ts",
        "last_sample_ts",
    }
    assert set(metrics["value"]) == {
        "mae",
        "samples",
        "error_window_mean",
        "drifts",
        "last_drift_ts",
        "last_sample_ts",
    }
    assert [metrics[m]["samples"] for m in ("propensity", "churn", "value")] == [500, 500, 500]
    assert models.version == 1500 and metrics["value"]["last_sample_ts"] == 499.0


def test_learning_does_not_mutate_inputs():
    samples = _mixed_samples(SyntheticStream(seed=4), 200)
    before = copy.deepcopy([(dict(s.features), s.action, s.target, s.ts) for s in samples])
    models = ModelSet()
    models.learn_many(samples)
    models.score(samples[0].features, ["a", "b"])
    assert [(dict(s.features), s.action, s.target, s.ts) for s in samples] == before


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (ModelSample("nope", {}, 1.0, 0.0), "unknown model 'nope'"),
        (ModelSample("propensity", {}, 1.0, 0.0), "needs the action"),
        (ModelSample.conversion({}, "a", 2, 0.0), "converted must be 0 or 1"),
        (ModelSample.churn({}, 1, 0.0).__class__("churn", {}, math.nan, 0.0), "target must be finite"),
        (ModelSample.revenue({}, -5.0, 0.0), "revenue must be a finite amount"),
    ],
)
def test_bad_samples_are_refused_and_change_nothing(sample, message):
    models = ModelSet()
    with pytest.raises(ValueError, match=message):
        models.learn_one(sample)
    assert models.version == 0
    assert all(m["samples"] == 0 for m in models.metrics().values())


# -- snapshots ---------------------------------------------------------------------------------------
def test_snapshot_round_trip_predicts_and_learns_identically():
    stream = SyntheticStream(seed=8, actions=("a", "b", "c"))
    models = ModelSet()
    models.learn_many(_mixed_samples(stream, 1_500))
    probe = [stream.conversion()[0] for _ in range(50)]
    blob = models.snapshot()
    restored = ModelSet.restore(blob)
    assert ModelSet.snapshot_version(blob) == models.version == restored.version == 4_500
    assert [restored.score(f, ["a", "b", "c", "new"]) for f in probe] == [
        models.score(f, ["a", "b", "c", "new"]) for f in probe
    ]
    assert restored.metrics() == models.metrics()
    more = _mixed_samples(stream, 300, start_ts=10_000.0)
    models.learn_many(more)
    restored.learn_many(more)
    assert [restored.score(f, ["a", "b"]) for f in probe] == [models.score(f, ["a", "b"]) for f in probe]
    assert restored.metrics() == models.metrics()


def test_restore_refuses_foreign_or_incompatible_bytes(monkeypatch):
    with pytest.raises(ValueError, match="not a cadence model snapshot"):
        ModelSet.restore(b"hello")
    blob = ModelSet().snapshot()
    monkeypatch.setattr("models.registry.SNAPSHOT_FORMAT", 99)
    with pytest.raises(ValueError, match=f"snapshot format {SNAPSHOT_FORMAT} is not 99"):
        ModelSet.restore(blob)
    monkeypatch.undo()
    monkeypatch.setattr("models.registry.river.__version__", "0.0.1")
    with pytest.raises(ValueError, match="written with river .* this process runs river 0.0.1"):
        ModelSet.restore(blob)
    assert blob.startswith(SNAPSHOT_MAGIC)



def test_synthetic_draw_seed_keeps_the_world_and_changes_the_draws() -> None:
    plain, same, other = (SyntheticStream(seed=3), SyntheticStream(seed=3, draw_seed=3),
                          SyntheticStream(seed=3, draw_seed=[3, 99]))
    first = [plain.conversion()[0] for _ in range(20)]
    assert first == [same.conversion()[0] for _ in range(20)]  # draw_seed defaults to seed
    assert first != [other.conversion()[0] for _ in range(20)]  # other contexts ...
    assert other._base.tolist() == plain._base.tolist()  # ... from the same world
    assert other._weights.tolist() == plain._weights.tolist()
