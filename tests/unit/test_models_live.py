"""The River models in the engine: delayed labels, training on one worker, published scores, churn labels,
scores in decisions, metrics and snapshots (no I/O)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import river
from prometheus_client.parser import text_string_to_metric_families

from bandits import make_policy
from cadence.metrics import Metrics
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import LearningSample
from contracts.events import Event
from engine.decide import BatchContexts, decide
from features.context import CONTEXT_DIM, CONTEXT_NAMES, build_context
from features.keys import UserDigest
from features.state import UserState
from learning.label_join import JoinConfig, LabelJoin, followed
from learning.live_models import (
    CHURN_CHUNK,
    MODEL_NAMES,
    LiveModels,
    LiveScorer,
    ModelConfig,
    churn_chunk_bytes,
    decode_churn_labels,
)
from learning.state import LearnedState
from models import ModelSet
from models.compiled import CompiledScorer
from policy.catalogue import Catalogue, ScoreRule, load_catalogue
from policy.pipeline import PolicyContext

VALUE_SCALE = 40.0
CLICK = 0.1
user_digest = UserDigest(bytes(range(32))).of  # how the engine names customers to the churn labeller
IDX = {n: i for i, n in enumerate(CONTEXT_NAMES)}


def exposure(did: str, action: str, ts: float, x: list[float] | None = None) -> LearningSample:
    return LearningSample("exposure", did, action, x or [1.0] + [0.0] * (CONTEXT_DIM - 1), ts=ts)


def reward(did: str, action: str, ts: float, value: float, x: list[float] | None = None) -> LearningSample:
    return LearningSample("reward", did, action, x or [1.0] + [0.0] * (CONTEXT_DIM - 1), reward=value, ts=ts)


def context(segment: str, device: str = "mobile", hour: float = 12.0) -> np.ndarray:
    x = np.zeros(CONTEXT_DIM)
    x[0] = 1.0
    x[IDX[f"segment_{segment}"]] = 1.0
    x[IDX[f"device_{device}"]] = 1.0
    x[IDX["hour_sin"]], x[IDX["hour_cos"]] = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
    return x


# -- the label join ------------------------------------------------------------------------------------
def propensity(labels: list) -> list[tuple[str | None, float, float]]:
    return [(lb.action, lb.target, lb.ts) for lb in labels if lb.model == "propensity"]


def test_a_conversion_is_a_positive_only_when_its_window_closes_and_revenue_is_learned_at_once():
    join = LabelJoin(JoinConfig(window_s=100.0, grace_s=10.0), CLICK, VALUE_SCALE)
    assert join.add([exposure("d1", "a", 0.0), exposure("d2", "b", 5.0), exposure("d3", "a", 6.0)]) == []
    assert join.add([reward("d2", "b", 20.0, CLICK)]) == []  # a click resolves nothing
    labels = join.add([reward("d1", "a", 50.0, 0.75)])  # a conversion paying 30: its revenue, no propensity yet
    assert [(lb.model, lb.target, lb.action, lb.ts) for lb in labels] == [("value", 30.0, None, 50.0)]
    assert len(join) == 3  # the converted exposure still waits for its window to close
    assert join.advance(109.9) == []  # d1's window closes at 100, plus 10 s grace
    assert propensity(join.advance(110.0)) == [("a", 1.0, 110.0)]
    late = join.add([reward("d3", "a", 108.0, 0.5)])  # 102 s after its decision: revenue, not a positive
    assert [(lb.model, lb.target) for lb in late] == [("value", 20.0)]
    assert join.advance(114.9) == []
    assert propensity(join.advance(115.0)) == [("b", 0.0, 115.0)]  # d2: shown, clicked, never converted
    assert propensity(join.advance(200.0)) == [("a", 0.0, 116.0)]  # d3: its conversion came too late
    assert len(join) == 0
    assert join.add([reward("d1", "a", 300.0, 0.75)]) == []  # after the close: nothing waits for it


def test_a_conversion_read_before_its_exposure_still_counts_while_the_exposure_may_come():
    # Exposure and conversion travel on different partitions of the learning topic and may be read out of
    # order; the conversion used to be dropped, and the exposure labelled 0 without its revenue.
    join = LabelJoin(JoinConfig(window_s=100.0, grace_s=10.0), CLICK, VALUE_SCALE)
    assert join.add([reward("d1", "a", 60.0, 0.5), reward("d2", "b", 30.0, 0.5)]) == []
    labels = join.add([exposure("d1", "a", 0.0)])  # it arrives: the conversion it missed counts now
    assert [(lb.model, lb.target, lb.ts) for lb in labels] == [("value", 20.0, 60.0)]
    assert join.add([reward("d1", "a", 61.0, 0.5)]) == []  # a duplicate conversion changes nothing
    assert propensity(join.advance(50.0)) == []  # d1 waits for its window (0 + 110)
    # d2's exposure comes after the watermark passed its conversion's ts + grace (30 + 10 <= 50) but while
    # the exposure is still accepted (0 + 110 > 50): the conversion used to be forgotten by then (label 0)
    labels = join.add([exposure("d2", "b", 0.0)])
    assert [(lb.model, lb.target, lb.ts) for lb in labels] == [("value", 20.0, 30.0)]
    assert propensity(join.advance(110.0)) == [("a", 1.0, 110.0), ("b", 1.0, 110.0)]
    # a conversion is forgotten once any exposure it could belong to would be refused as closed
    assert join.add([reward("d3", "a", 200.0, 0.5)]) == []
    join.advance(309.0)
    assert join.add([exposure("d3", "a", 199.5)]) != []  # 199.5 + 110 > 309: still accepted, still converted
    join.add([reward("d4", "a", 200.0, 0.5)])
    join.advance(310.0)
    assert join.add([exposure("d4", "a", 200.0)]) == [] and join.closed == 1  # 200 + 110 <= 310: closed


def test_labels_come_in_exposure_order_with_positives_and_negatives_interleaved():
    join = LabelJoin(JoinConfig(window_s=50.0, grace_s=5.0), CLICK, VALUE_SCALE)
    converts = {1: 40.0, 2: 3.0, 5: 20.0, 8: 1.0}  # decision -> seconds to its conversion
    join.add([exposure(f"d{i}", f"a{i}", float(i)) for i in range(10)])
    # conversions arrive in their own time order (d8 first), not in the order of their decisions
    rewards = sorted((i + dt, i) for i, dt in converts.items())
    values = join.add([reward(f"d{i}", f"a{i}", ts, 0.5) for ts, i in rewards])
    assert [lb.model for lb in values] == ["value"] * 4
    assert join.advance(54.9) == []
    first = propensity(join.advance(59.0))  # the windows of d0..d4 closed
    rest = propensity(join.advance(1e9))
    assert first + rest == [(f"a{i}", 1.0 if i in converts else 0.0, i + 55.0) for i in range(10)]
    assert len(first) == 5


def test_a_burst_yields_no_propensity_before_its_windows_close_then_exactly_its_conversion_rate():
    join = LabelJoin(JoinConfig(window_s=600.0, grace_s=60.0), CLICK, VALUE_SCALE)
    early: list = []
    for i in range(1000):  # one exposure every 0.1 s; every other one converts 5 s later
        early += join.add([exposure(f"d{i}", "a", i * 0.1)])
        if i % 2 == 0:
            early += join.add([reward(f"d{i}", "a", i * 0.1 + 5.0, 0.5)])
    early += join.advance(659.9)  # the first window closes at 660
    assert propensity(early) == [] and sum(lb.model == "value" for lb in early) == 500
    labels = propensity(join.advance(760.0))
    assert len(labels) == 1000 and sum(target for _, target, _ in labels) / len(labels) == 0.5


def test_a_fresh_model_does_not_learn_from_positives_alone():
    config = ModelConfig(join=JoinConfig(window_s=600.0, grace_s=60.0), min_samples=50)
    live = LiveModels(config, CLICK, VALUE_SCALE)
    live.training = True
    x = context("vip").tolist()
    for i in range(400):  # half the exposures convert 5 s after their decision
        batch = [exposure(f"d{i}", "a", float(i), x)] + ([reward(f"d{i}", "a", i + 5.0, 0.5, x)] if i % 2 else [])
        live.learn(batch, i + 5.0)
    while live.train():
        pass
    assert live.models.samples()["propensity"] == 0 and live.models.samples()["value"] == 200
    assert live.publish().ready == {"value"}  # no propensity shown before its labels exist
    live.learn([], 1e9)
    while live.train():
        pass
    assert live.models.samples()["propensity"] == 400
    assert 0.3 < live.publish().score(context("vip"), ["a"])["propensity:a"] < 0.7  # not near 1.0


def test_a_conversion_at_window_s_is_a_positive_one_after_it_is_not():
    join = LabelJoin(JoinConfig(window_s=100.0, grace_s=0.0), CLICK, VALUE_SCALE)
    join.add([exposure("d1", "a", 0.0), exposure("d2", "a", 0.0)])
    join.add([reward("d1", "a", 100.0, 0.5), reward("d2", "a", 100.5, 0.5)])
    assert [target for _, target, _ in propensity(join.advance(100.0))] == [1.0, 0.0]


def test_duplicates_and_repeated_conversions_change_nothing():
    join = LabelJoin(JoinConfig(window_s=100.0, grace_s=10.0), CLICK, VALUE_SCALE)
    join.add([exposure("d1", "a", 0.0), exposure("d2", "b", 1.0)])
    first = join.add([reward("d1", "a", 10.0, 0.5)])
    replays = [exposure("d1", "a", 0.0), reward("d1", "a", 10.0, 0.5), exposure("d2", "b", 1.0)]  # at-least-once
    again = join.add(replays + [reward("d1", "a", 20.0, 0.75)])  # and a second conversion, later
    assert [(lb.model, lb.target) for lb in first] == [("value", 20.0)] and again == [] and len(join) == 2
    assert propensity(join.advance(1e9)) == [("a", 1.0, 110.0), ("b", 0.0, 111.0)]  # one label each


def test_an_exposure_redelivered_after_its_window_closed_is_not_labelled_again():
    join = LabelJoin(JoinConfig(window_s=100.0, grace_s=10.0), CLICK, VALUE_SCALE)
    join.add([exposure("d1", "a", 0.0), exposure("d2", "b", 50.0)])
    assert join.add([reward("d1", "a", 20.0, 0.5)])[0].model == "value"
    assert propensity(join.advance(111.0)) == [("a", 1.0, 110.0)]  # d1's window closed; d2 still waits
    # at-least-once: d1 (and its conversion) come again after its label went out; d2 again while it waits
    again = join.add([exposure("d1", "a", 0.0), reward("d1", "a", 20.0, 0.5), exposure("d2", "b", 50.0)])
    assert again == [] and len(join) == 1 and join.closed == 1 and join.dropped == 0
    assert propensity(join.advance(1e9)) == [("b", 0.0, 160.0)]  # one propensity label each, nothing more
    join.add([exposure("d2", "b", 50.0), exposure("d3", "c", 1e9 - 109.0)])  # d2 closed at 1e9; d3 not
    assert join.closed == 2 and len(join) == 1
    join.advance(5.0)  # a watermark that went back (a slower worker joined) does not reopen closed windows
    join.add([exposure("d1", "a", 0.0)])
    assert join.closed == 3 and len(join) == 1


def test_the_trainer_learns_a_redelivered_exposure_once_and_counts_the_copy():
    live = LiveModels(ModelConfig(join=JoinConfig(window_s=100.0, grace_s=10.0), min_samples=1), CLICK,
                      VALUE_SCALE)
    live.training = True
    live.learn([exposure("d1", "a", 0.0)], watermark=200.0)
    live.learn([exposure("d1", "a", 0.0)], watermark=400.0)  # the copy, after SeenKeys forgot the key
    assert live.train(100) == 1 and live.stats()["dropped"]["window_closed"] == 1
    metrics = Metrics()
    live.export(metrics)
    text = metrics.exposition().decode()
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "cadence_model_labels_dropped_total" and s.labels == {"reason": "window_closed"}]
    assert found == [1.0]


def test_exposures_are_bounded_deduplicated_and_unknown_rewards_ignored():
    join = LabelJoin(JoinConfig(window_s=100.0, grace_s=0.0, capacity=2), CLICK, VALUE_SCALE)
    join.add([exposure("d1", "a", 0.0), exposure("d1", "a", 0.0), exposure("d2", "a", 1.0)])
    assert len(join) == 2 and join.dropped == 0
    join.add([exposure("d3", "a", 2.0)])  # full: the oldest goes, unlearned
    assert len(join) == 2 and join.dropped == 1
    assert join.add([reward("d1", "a", 5.0, 0.5), reward("nobody", "a", 5.0, 0.5)]) == []
    assert join.add([reward("d2", "a", 0.5, 0.5)]) == []  # a reward before its decision cannot be its effect
    assert sorted(lb.target for lb in join.advance(1e9)) == [0.0, 0.0]
    # a converted exposure waits like the others, so the oldest goes whatever its outcome
    join.add([exposure("d4", "c", 1e9 + 10.0), exposure("d5", "d", 1e9 + 11.0)])
    assert [lb.model for lb in join.add([reward("d4", "c", 1e9 + 12.0, 0.5)])] == ["value"]
    join.add([exposure("d6", "e", 1e9 + 13.0)])
    assert join.dropped == 2
    assert [(lb.action, lb.target) for lb in join.advance(2e9)] == [("d", 0.0), ("e", 0.0)]


def test_the_followed_share_is_stable_and_about_right():
    ids = [f"dec{i}" for i in range(20_000)]
    chosen = [followed(d, 0.25) for d in ids]
    assert chosen == [followed(d, 0.25) for d in ids]  # the same on every worker and every run
    assert 0.23 < sum(chosen) / len(ids) < 0.27
    join = LabelJoin(JoinConfig(share=0.25), CLICK, VALUE_SCALE)
    join.add([exposure(d, "a", 0.0) for d in ids])
    assert len(join) == sum(chosen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_s": 0.0}, "window_s > 0"),
        ({"grace_s": -1.0}, "grace_s >= 0"),
        ({"capacity": 0}, "capacity must be at least 1"),
        ({"share": 0.0}, r"share must be in \(0, 1\]"),
        ({"share": 1.5}, r"share must be in \(0, 1\]"),
    ],
)
def test_bad_join_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JoinConfig(**kwargs)


# -- learning on one worker, scoring everywhere ----------------------------------------------------------
def seeded_stream(n: int, seed: int = 3) -> list[LearningSample]:
    """Two offers shown at random; "a" converts for vip customers (40 %), everything else rarely (3 %)."""
    rng = np.random.default_rng(seed)
    out: list[LearningSample] = []
    for i in range(n):
        segment = ("new", "casual", "loyal", "vip")[int(rng.integers(4))]
        x = context(segment, hour=float(rng.uniform(0, 24))).tolist()
        action = "ab"[int(rng.integers(2))]
        out.append(exposure(f"d{i}", action, float(i), x))
        p = 0.4 if (action == "a" and segment == "vip") else 0.03
        if rng.random() < p:
            out.append(reward(f"d{i}", action, i + 30.0, float(rng.uniform(0.3, 1.0)), x))
    return sorted(out, key=lambda s: s.ts)


def trained(n: int = 4000, training: bool = True, **config: object) -> LiveModels:
    live = LiveModels(ModelConfig(join=JoinConfig(window_s=60.0, grace_s=5.0), min_samples=50, **config),
                      CLICK, VALUE_SCALE)
    live.training = training
    stream = seeded_stream(n)
    for i in range(0, len(stream), 500):
        chunk = stream[i:i + 500]
        live.learn(chunk, chunk[-1].ts)
    live.learn([], 1e9)  # the stream moved on: every window closed
    while live.train(300):
        pass
    return live


def test_the_trainer_learns_propensity_and_value_that_rank_contexts_sensibly():
    live = trained()
    counts = live.models.samples()
    assert counts["propensity"] == 4000 and 100 < counts["value"] < 700 and counts["churn"] == 0
    scorer = live.publish()
    assert scorer.ready == {"propensity", "value"} and scorer.version == live.models.version
    vip, new = scorer.score(context("vip"), ["a", "b"]), scorer.score(context("new"), ["a", "b"])
    assert "churn_risk" not in vip  # no churn label yet: not shown
    assert vip["propensity:a"] > 2 * vip["propensity:b"]
    assert vip["propensity:a"] > 2 * new["propensity:a"]
    assert 0.01 < new["propensity:b"] < 0.1
    assert 12.0 < vip["value"] < 40.0  # revenue uniform in [12, 40]


def test_a_worker_that_does_not_train_learns_nothing_but_uses_the_published_scorer():
    follower = trained(n=1000, training=False)
    assert follower.models.version == 0 and follower.scorer is None
    assert follower.stats()["waiting_exposures"] == 0  # it still ran the join (ready to take over)
    published = trained(n=1000).publish()
    follower.use(LiveScorer.from_json(published.to_json()))
    x = context("vip")
    assert follower.scorer.score(x, ["a", "b"]) == published.score(x, ["a", "b"])


def test_scores_wait_for_enough_samples():
    live = trained(n=30)
    assert live.publish().score(context("vip"), ["a", "b"]) == {}
    assert live.profile_scores(context("vip"), ["a", "b"]) == {"model_version": live.models.version}


# -- churn ---------------------------------------------------------------------------------------------
def test_churn_labels_come_from_activity_carry_no_id_and_train_the_trainer():
    day = 86400.0
    owner = LiveModels(ModelConfig(churn_horizon_s=2 * day, churn_sample_every_s=day / 4, min_samples=20),
                       CLICK, VALUE_SCALE)
    trainer = LiveModels(ModelConfig(min_samples=20), CLICK, VALUE_SCALE)
    trainer.training = True
    for i in range(60):  # new customers visit once and vanish; loyal ones come back every few hours
        owner.observe(user_digest(f"new{i}"), i * 60.0, context("new"))
    for t in np.arange(0.0, 6 * day, 3 * 3600.0):
        for i in range(10):
            owner.observe(user_digest(f"loyal{i}"), float(t) + i, context("loyal", hour=float(t % day) / 3600))
        owner.advance_activity(float(t))
    chunks = owner.take_churn_labels()
    assert chunks is not None and owner.take_churn_labels() is None
    assert not [c for c in chunks if b"new" in c or b"loyal" in c]  # ids never leave the owner
    labels = [lb for c in chunks for lb in decode_churn_labels(c)]
    assert sum(lb.target for lb in labels) == 60 and len(labels) > 200
    trainer.add_churn_labels(chunks)
    while trainer.train():
        pass
    scores = trainer.publish()
    assert "churn" in scores.ready
    assert scores.score(context("new"), [])["churn_risk"] > 0.5 > scores.score(context("loyal"), [])["churn_risk"]


def test_churn_labels_ship_in_chunks_of_bounded_size():
    # a batch used to be the whole outbox (up to 50,000 labels, 6.4 MB) in one entry of the Redis list
    owner = LiveModels(ModelConfig(churn_horizon_s=100.0), CLICK, VALUE_SCALE)
    n = 2 * CHURN_CHUNK + 345
    for i in range(n):
        owner.observe(user_digest(f"gone{i}"), float(i), context("new"))
    owner.advance_activity(1e6)  # every one of them churned, labelled at once
    chunks = owner.take_churn_labels()
    assert chunks is not None and owner.take_churn_labels() is None
    sizes = [len(decode_churn_labels(c)) for c in chunks]
    assert sizes == [CHURN_CHUNK, CHURN_CHUNK, 345]
    assert max(len(c) for c in chunks) <= churn_chunk_bytes() < 160_000  # ~133 B a label with 20 features
    assert [lb.ts for c in chunks for lb in decode_churn_labels(c)] == sorted(lb.ts for c in chunks
                                                                            for lb in decode_churn_labels(c))


def test_erasure_and_rebalance_drop_watched_customers():
    live = LiveModels(ModelConfig(), CLICK, VALUE_SCALE)
    live.observe(user_digest("u1"), 0.0, context("new"))
    live.observe(user_digest("u2"), 0.0, context("new"))
    live.forget({user_digest("u1")})
    assert live.stats()["watched_customers"] == 1
    live.reset_activity()
    assert live.stats()["watched_customers"] == 0 and live.stats()["dropped"]["rebalance"] == 1
    assert live.take_churn_labels() is None


def test_the_watched_share_of_customers_follows_the_setting():
    live = LiveModels(ModelConfig(churn_share=0.5), CLICK, VALUE_SCALE)
    for i in range(4000):
        live.observe(user_digest(f"user{i}"), 0.0, context("casual"))
    assert 1800 < live.stats()["watched_customers"] < 2200


# -- decisions, metrics, snapshots ------------------------------------------------------------------------
def engine_context(min_rule: ScoreRule | None = None) -> PolicyContext:
    cat = load_catalogue(DEFAULT_CATALOGUE)
    if min_rule is not None:
        actions = dict(cat.actions)
        actions["offer_bundle"] = dataclasses.replace(actions["offer_bundle"], min_score=min_rule)
        cat = Catalogue(cat.placements, actions, cat.contact)
    return PolicyContext(cat)


def request(i: int, segment: str = "vip") -> Event:
    return Event(f"e{i}", f"u{i}", 1_767_571_200.0 + 43_200 + i, "page_view", "web-events", "web",
                 placement="home_hero", device="mobile", segment=segment)


def offer_models(n: int = 3000) -> LiveModels:
    """Trained on the default catalogue's home_hero offers: offer_bundle converts for vip customers."""
    live = LiveModels(ModelConfig(join=JoinConfig(window_s=60.0, grace_s=0.0), min_samples=50), CLICK, VALUE_SCALE)
    live.training = True
    offers = ["offer_free_shipping", "offer_10pct", "offer_bundle", "offer_loyalty_points", "offer_premium_trial"]
    rng = np.random.default_rng(5)
    for i in range(n):
        segment = ("new", "vip")[i % 2]
        x, action = context(segment).tolist(), offers[int(rng.integers(len(offers)))]
        samples = [exposure(f"d{i}", action, float(i), x)]
        if rng.random() < (0.5 if action == "offer_bundle" and segment == "vip" else 0.02):
            samples.append(reward(f"d{i}", action, i + 1.0, 0.75, x))
        live.learn(samples, float(i))
    live.learn([], 1e9)
    while live.train(500):
        pass
    live.publish()
    return live


def test_decisions_carry_compact_scores_and_min_score_rules_use_them():
    live = offer_models()
    policy = make_policy("linucb", CONTEXT_DIM, seed=1)
    state = UserState("u", {"seg": "vip", "dev": "mobile"})
    decided = decide(request(1), state, engine_context(), policy, live)
    scores = decided.decision.trace["scores"]
    assert set(scores) == {"model_version", "propensity", "value"} and scores["model_version"] == live.models.version
    expected = live.scorer.score(decided.x, [decided.decision.action])
    assert scores["propensity"] == round(expected[f"propensity:{decided.decision.action}"], 4)
    assert decided.decision.to_json()  # the trace stays JSON

    strict = engine_context(ScoreRule("propensity:offer_bundle", 0.3))
    vip = decide(request(2), state, strict, policy, live).decision.trace
    new = decide(request(3, "new"), UserState("u3", {"seg": "new"}), strict, policy, live).decision.trace
    assert "offer_bundle" in vip["eligible"]
    assert new["removed"]["offer_bundle"] == "score"
    without = decide(request(4), state, strict, policy, None).decision.trace  # no models: a missing score
    assert "scores" not in without and without["removed"]["offer_bundle"] == "score"


def test_an_action_gated_on_its_own_propensity_is_scored_from_the_first_decision():
    # the scored actions were once the placement's *eligible* ones without scores, which never include an
    # action gated on a score: on a fresh worker that action was removed for "score" forever
    live = offer_models()
    strict = engine_context(ScoreRule("propensity:offer_bundle", 0.3))
    cat = strict.catalogue
    every = tuple(a for a in cat.actions if "home_hero" in cat.actions[a].placements)
    assert cat.placement_actions("home_hero") == every and "offer_bundle" in every
    policy = make_policy("linucb", CONTEXT_DIM, seed=1)
    trace = decide(request(1), UserState("u1", {"seg": "vip", "dev": "mobile"}), strict, policy, live).decision.trace
    assert "offer_bundle" in trace["eligible"], trace["removed"]


def test_a_batch_scores_its_requests_in_one_product_with_the_scores_of_one_by_one():
    live = offer_models()
    scorer = live.scorer
    assert scorer is not None
    strict = engine_context(ScoreRule("propensity:offer_bundle", 0.3))
    policy = make_policy("linucb", CONTEXT_DIM, seed=1)
    segments = ["vip", "new", "vip", "new", "vip", "new"]
    events = [request(i, seg) for i, seg in enumerate(segments)]
    states = [UserState(f"u{i}", {"seg": seg, "dev": "mobile"}) for i, seg in enumerate(segments)]
    batch = BatchContexts.build(policy, list(zip(range(6), events, states, strict=True)), scorer)
    assert batch.logits is not None and len(batch.logits) == 6
    actions = strict.catalogue.placement_actions("home_hero")
    for i, event in enumerate(events):
        z = batch.logits_of(i, scorer)
        assert z is not None
        alone = scorer.score(build_context(event, states[i]), actions)
        together = scorer.score_logits(z, actions)
        assert together.keys() == alone.keys()
        assert all(together[k] == pytest.approx(v, rel=1e-12, abs=1e-15) for k, v in alone.items())
        trace = decide(event, states[i], strict, policy, live, batch=batch, position=i).decision.trace
        if segments[i] == "vip":
            assert "offer_bundle" in trace["eligible"], trace
        else:
            assert trace["removed"]["offer_bundle"] == "score"
    # a scorer published after the batch was built is not the batch's: its requests are scored alone
    assert batch.logits_of(0, LiveScorer(scorer.compiled, scorer.ready)) is None
    assert BatchContexts.build(policy, [(0, events[0], states[0])], None).logits is None


def exported(metrics: Metrics, name: str, **labels: str) -> float | None:
    found = [s.value for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples
             if s.name == name and s.labels == labels]
    return found[0] if found else None


def scorer_laid_out_as(names: tuple[str, ...], version: int = 7, width: int | None = None) -> LiveScorer:
    coef = np.random.default_rng(0).normal(size=(3, width if width is not None else len(names)))
    return LiveScorer(CompiledScorer(names, version, coef, np.zeros(3), {}, 1.0), frozenset(MODEL_NAMES))


def test_a_published_scorer_laid_out_unlike_this_worker_is_refused_logged_and_counted(caplog):
    live = offer_models()
    mine = live.scorer
    assert mine is not None
    metrics = Metrics()
    reordered = scorer_laid_out_as(tuple(reversed(CONTEXT_NAMES)), version=7)  # same width, other order
    wider = scorer_laid_out_as((*CONTEXT_NAMES, "new_feature"), version=8)  # a rolling deploy adding one
    with caplog.at_level("ERROR", logger="learning.live_models"):
        live.use(reordered)
        live.use(reordered)  # the exchange offers it again every second: logged and counted once
        live.use(wider)
    assert live.scorer is mine  # decisions keep the scorer they had
    # its own logger only: a Kafka client another test left reconnecting logs ERRORs from its thread meanwhile
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name == "learning.live_models"]
    assert len(errors) == 2 and all("refused the published scorer" in e for e in errors)
    assert "version 7" in errors[0] and "'tenure' there, 'bias' here" in errors[0] and "rolling deploy" in errors[0]
    assert "21 inputs against 20 here (it has ['new_feature'], lacks [])" in errors[1]
    live.export(metrics)
    assert exported(metrics, "cadence_model_scorer_errors_total", reason="layout") == 2
    assert exported(metrics, "cadence_model_version") == mine.version
    fresh = LiveModels(ModelConfig(), CLICK, VALUE_SCALE)
    fresh.use(wider)  # a worker with no scorer yet decides without scores rather than with this one
    assert fresh.scorer is None
    same = scorer_laid_out_as(CONTEXT_NAMES, version=9)
    fresh.use(same)
    assert fresh.scorer is same


def test_a_scorer_failing_on_a_batch_leaves_its_requests_decided_without_scores_and_counted(caplog):
    live = LiveModels(ModelConfig(), CLICK, VALUE_SCALE)
    broken = scorer_laid_out_as(CONTEXT_NAMES, width=CONTEXT_DIM + 1)  # names right, coefficients not
    live.use(broken)
    assert live.scorer is broken
    ctx = engine_context(ScoreRule("propensity:offer_bundle", 0.3))
    policy = make_policy("linucb", CONTEXT_DIM, seed=1)
    events = [request(i) for i in range(3)]
    states = [UserState(f"u{i}", {"seg": "vip", "dev": "mobile"}) for i in range(3)]
    with caplog.at_level("ERROR", logger="learning.live_models"):
        batch = BatchContexts.build(policy, list(zip(range(3), events, states, strict=True)), broken)
        decided = [decide(e, states[i], ctx, policy, live, batch=batch, position=i) for i, e in enumerate(events)]
        alone = decide(request(9), states[0], ctx, policy, live)
    assert batch.logits is None and batch.prepared is not None
    for d in [*decided, alone]:
        assert d.pending is not None and "scores" not in d.decision.trace
        assert d.decision.trace["removed"]["offer_bundle"] == "score"  # as with no scorer: a missing score
    assert live.stats()["scorer_errors"] == {"layout": 0, "score": 4}
    # its own logger only: a Kafka client another test left reconnecting logs ERRORs from its thread meanwhile
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name == "learning.live_models"]
    assert len(errors) == 1 and "decided without model scores" in errors[0]
    metrics = Metrics()
    live.export(metrics)
    assert exported(metrics, "cadence_model_scorer_errors_total", reason="score") == 4
    assert live.profile_scores(context("vip"), ["offer_bundle"]) == {"model_version": broken.version}


def test_profile_scores_rank_the_offer_that_converts_first():
    live = offer_models()
    actions = ["offer_free_shipping", "offer_10pct", "offer_bundle", "offer_loyalty_points", "offer_premium_trial"]
    profile = live.profile_scores(context("vip"), actions)
    assert profile["model_version"] == live.models.version
    assert max(profile["propensity"], key=profile["propensity"].get) == "offer_bundle"
    assert profile["value"] > 0


def test_model_metrics_and_drifts_reach_prometheus():
    metrics = Metrics()
    live = trained(n=3000)
    live.publish()
    live.export(metrics)
    live.export(metrics)  # a second export adds nothing
    text = metrics.exposition().decode()

    def value(name: str, **labels: str) -> float:
        found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == name and s.labels == labels]
        assert found, f"{name}{labels} not exported"
        return found[0]

    reported = live.models.metrics()
    assert value("cadence_model_metric", model="propensity", metric="log_loss") == pytest.approx(
        reported["propensity"]["log_loss"])
    assert 0.6 < value("cadence_model_metric", model="propensity", metric="roc_auc") <= 1.0
    assert value("cadence_model_metric", model="value", metric="mae") > 0
    assert value("cadence_model_samples_learned_total", model="propensity") == 3000
    assert value("cadence_model_drifts_total", model="propensity") == reported["propensity"]["drifts"]
    assert value("cadence_model_version") == live.models.version
    assert value("cadence_model_labels_waiting", kind="waiting_exposures") == 0
    assert not [s for f in text_string_to_metric_families(text) for s in f.samples  # nothing learned: no metric
                if s.name == "cadence_model_metric" and s.labels["model"] == "churn"]


def test_a_worker_that_stops_training_stops_exporting_model_quality():
    metrics = Metrics()
    live = trained(n=1000)
    live.export(metrics)
    assert exported(metrics, "cadence_model_metric", model="propensity", metric="log_loss") is not None
    live.training = False  # the snapshot lease went to another worker: its models are the live ones
    live.export(metrics)
    assert exported(metrics, "cadence_model_metric", model="propensity", metric="log_loss") is None
    assert "cadence_model_metric{" not in metrics.exposition().decode()
    assert exported(metrics, "cadence_model_samples_learned_total", model="propensity") == 1000  # counters stay
    live.export(metrics)  # nothing left to remove
    live.training = True  # and it comes back when the worker trains again
    live.export(metrics)
    assert exported(metrics, "cadence_model_metric", model="propensity", metric="log_loss") is not None


def test_drift_after_an_abrupt_change_is_counted_and_exported():
    metrics = Metrics()
    live = LiveModels(ModelConfig(join=JoinConfig(window_s=10.0, grace_s=0.0)), CLICK, VALUE_SCALE)
    live.training = True
    rng = np.random.default_rng(1)
    before_change = None
    for i in range(12_000):  # "a" converts for vip customers, then, from sample 6000 on, only for new ones
        segment = ("new", "vip")[i % 2]
        converts = (segment == "vip") == (i < 6000)
        x = context(segment).tolist()
        batch = [exposure(f"d{i}", "a", float(i), x)]
        if rng.random() < (0.6 if converts else 0.02):
            batch.append(reward(f"d{i}", "a", i + 1.0, 0.5, x))
        live.learn(batch, float(i))
        live.train()
        if i == 5999:
            before_change = live.models.drifts()["propensity"]
    live.export(metrics)
    report = live.models.metrics()["propensity"]
    assert before_change == 0  # learning a stationary stream raised no alarm
    assert report["drifts"] >= 1 and 6000 < report["last_drift_ts"] < 7000  # the change did, soon after
    exported = [s.value for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples
                if s.name == "cadence_model_drifts_total" and s.labels == {"model": "propensity"}]
    assert exported == [report["drifts"]]


def test_snapshots_keep_the_models_and_survive_another_river_version(monkeypatch):
    live = trained(n=1500)
    policy = make_policy("linucb", CONTEXT_DIM, seed=2)
    restored = LearnedState.unpack(LearnedState(policy, live.models).pack())
    assert isinstance(restored.models, ModelSet) and restored.models.version == live.models.version
    other = LiveModels(ModelConfig(min_samples=50), CLICK, VALUE_SCALE)
    other.replace(restored.models)
    x = context("vip")
    assert other.scorer.score(x, ["a", "b"]) == pytest.approx(live.publish().score(x, ["a", "b"]), rel=1e-12)

    blob = LearnedState(policy, live.models).pack()
    monkeypatch.setattr(river, "__version__", "0.0.1")
    foreign = LearnedState.unpack(blob)
    assert foreign.models is None and foreign.policy.version == policy.version  # the policy still loads
