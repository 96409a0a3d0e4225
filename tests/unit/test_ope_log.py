"""Joining the learning topic's exposures and rewards into logged decisions."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from bandits.linucb import LinUCB
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import LearningSample
from ope.candidates import Constant
from ope.estimators import evaluate
from ope.log import DecisionLog, LoggedDecision, join_samples, read_jsonl
from policy.catalogue import Action, Catalogue, Placement, load_catalogue
from policy.pipeline import PolicyContext, PolicyRequest, decide_action
from policy.state import UserPolicyState
from policy.stickiness import StickinessSettings

X = [1.0] + [0.0] * 19


def exposure(
    decision_id: str,
    action: str = "offer_10pct",
    p: float | None = 0.5,
    placement: str = "home_hero",
    ts: float = 0.0,
) -> dict:
    doc = {
        "kind": "exposure",
        "decision_id": decision_id,
        "action": action,
        "x": X,
        "placement": placement,
        "ts": ts,
    }
    if p is not None:
        doc["probability"] = p
    return doc


def reward(decision_id: str, r: float, action: str = "offer_10pct", ts: float = 10.0) -> dict:
    return {
        "kind": "reward",
        "decision_id": decision_id,
        "action": action,
        "x": X,
        "reward": r,
        "ts": ts,
        "placement": "home_hero",
        "probability": 0.5,
    }


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(DEFAULT_CATALOGUE)


def test_rewards_are_summed_per_decision_and_missing_rewards_count_zero(catalogue):
    log = join_samples(
        [exposure("a", ts=1), reward("a", 0.1, ts=5), reward("a", 0.45, ts=9), exposure("b", ts=2)], catalogue
    )
    by_id = {d.decision_id: d for d in log}
    assert by_id["a"].reward == pytest.approx(0.55)
    assert by_id["b"].reward == 0.0
    assert by_id["a"].eligible == tuple(catalogue.eligible("home_hero"))
    assert [d.decision_id for d in log] == ["a", "b"]  # ordered by event time


def test_redelivered_samples_are_dropped_and_counted(catalogue):
    log = join_samples(
        [exposure("a"), exposure("a"), reward("a", 0.1), reward("a", 0.1), reward("a", 0.1, ts=20.0)],
        catalogue,
    )
    assert len(log) == 1
    assert log.decisions[0].reward == pytest.approx(
        0.2
    )  # the third reward has another event time: a real one
    assert (log.report.duplicate_exposures, log.report.duplicate_rewards) == (1, 1)
    assert any("repeated" in note for note in log.report.notes())


def test_lift_only_rewards_are_left_out_without_calling_them_orphans(catalogue):
    # engine.attribution.lift_only_reward: a reward the lift counts that no decision was credited with (action
    # "none", an id of its own); read as a decision's reward it was an "orphan" telling to re-export the topic
    log = join_samples([exposure("a"), reward("a", 1.0), reward("lift-x", 1.0, action="none")], catalogue)
    assert (log.report.orphan_rewards, log.report.lift_only_rewards, log.report.rewards) == (0, 1, 1)
    assert [d.reward for d in log.decisions] == [1.0]
    assert "no exposure" not in " ".join(log.report.notes())


def test_orphan_rewards_and_unknown_placements_are_reported(catalogue):
    log = join_samples(
        [reward("ghost", 1.0), exposure("a", action="banner_x", placement="new_slot")], catalogue
    )
    assert log.report.orphan_rewards == 1
    assert log.report.unknown_placements == ["new_slot"]
    assert log.decisions[0].eligible == (
        "banner_x",
    )  # taken from the log when the catalogue does not know it
    notes = " ".join(log.report.notes())
    assert "no exposure" in notes and "not in the catalogue" in notes


def test_missing_probability_is_kept_as_none_not_defaulted(catalogue):
    # LearningSample.from_json would fill in 1.0; the reader must not hide a log that cannot be weighted
    log = join_samples([exposure("a", p=None), exposure("b", p=0.25)], catalogue)
    probs = {d.decision_id: d.probability for d in log}
    assert probs == {"a": None, "b": 0.25}


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"kind": "click"}, "field 'kind'"),
        ({"decision_id": ""}, "field 'decision_id'"),
        ({"x": "1,2,3"}, "field 'x'"),
        ({"x": [1.0, 2.0]}, "has 2 values"),
        ({"action": "email_digest"}, "not eligible for placement 'home_hero'"),
    ],
)
def test_invalid_records_are_skipped_with_a_reason(catalogue, bad, problem):
    log = join_samples([exposure("good"), {**exposure("bad"), **bad}], catalogue)
    assert [d.decision_id for d in log] == ["good"]
    assert any(problem in p for p in log.report.problems), log.report.problems


def test_only_decisions_the_bandit_drew_are_kept_and_the_rest_are_counted(catalogue):
    samples = [
        {**exposure("e1"), "mode": "explore"},
        {**exposure("e2"), "mode": "exploit"},
        exposure("old"),  # logs from before modes were recorded count as the bandit's
        {**exposure("h1", action="none", p=1.0), "mode": "holdout"},
        {**exposure("s1", p=1.0), "mode": "sticky"},
        {**exposure("s2", p=1.0), "mode": "sticky"},
        reward("s1", 0.4),  # the reward of a left-out decision is not an orphan
        reward("e1", 0.1),
    ]
    log = join_samples(samples, catalogue)
    assert sorted(d.decision_id for d in log) == ["e1", "e2", "old"]
    assert log.report.excluded_modes == {"holdout": 1, "sticky": 2}
    assert log.report.orphan_rewards == 0 and not log.report.problems
    assert "left out 3 decisions the bandit did not draw (holdout: 1, sticky: 2)" in " ".join(
        log.report.notes()
    )
    with_sticky = join_samples(samples, catalogue, modes=("explore", "exploit", "sticky"))
    assert len(with_sticky) == 5 and {d.decision_id: d.reward for d in with_sticky}["s1"] == pytest.approx(
        0.4
    )


def test_batched_messages_are_read_as_their_samples(tmp_path, catalogue):
    path = tmp_path / "learning.jsonl"
    batch = {"samples": [exposure("a"), reward("a", 0.2), exposure("b")]}
    path.write_bytes(orjson.dumps(batch) + b"\n" + orjson.dumps(exposure("c")) + b"\n")
    samples, problems = read_jsonl(path)
    assert not problems
    assert [d.get("_where") for d in samples] == [
        "learning.jsonl:1#0",
        "learning.jsonl:1#1",
        "learning.jsonl:1#2",
        "learning.jsonl:2",
    ]
    assert sorted(d.decision_id for d in join_samples(samples, catalogue)) == ["a", "b", "c"]


def test_learning_sample_instances_join_like_json(catalogue):
    samples = [
        LearningSample("exposure", "a", "offer_bundle", X, probability=0.2, placement="home_hero", ts=3.0),
        LearningSample("reward", "a", "offer_bundle", X, reward=0.7, placement="home_hero", ts=4.0),
    ]
    (d,) = join_samples(samples, catalogue)
    assert (d.action, d.probability, d.reward) == ("offer_bundle", 0.2, 0.7)


def test_read_jsonl_keeps_good_lines_and_names_bad_ones(tmp_path, catalogue):
    path = tmp_path / "learning.jsonl"
    path.write_bytes(
        orjson.dumps(exposure("a")) + b"\n{not json\n\n" + orjson.dumps(reward("a", 0.3)) + b"\n[1]\n"
    )
    samples, problems = read_jsonl(path)
    assert len(samples) == 2
    assert [p.split(":")[1] for p in problems] == ["2", "5"]  # line numbers of the bad lines
    log = join_samples(samples, catalogue, problems)
    assert log.decisions[0].reward == pytest.approx(0.3)
    assert "skipped 2 unusable records" in " ".join(log.report.notes())


def test_read_jsonl_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="export the learning topic"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_split_is_by_event_time():
    import numpy as np

    decisions = [
        LoggedDecision(f"d{i}", np.ones(2), "a", 0.5, 0.0, "p", ("a", "b"), ts=float(10 - i))
        for i in range(10)
    ]
    first, second = DecisionLog(decisions).split(0.5)
    assert max(d.ts for d in first) < min(d.ts for d in second)
    assert len(first) + len(second) == 10
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        DecisionLog(decisions).split(1.0)


def test_batches_in_columns_are_read_like_the_samples_they_hold(tmp_path, catalogue):
    from contracts.decisions import encode_samples

    samples = [
        LearningSample("exposure", "a", "offer_bundle", [0.1 * i for i in range(20)], probability=0.2,
                       placement="home_hero", ts=3.0),
        LearningSample("reward", "a", "offer_bundle", [0.1 * i for i in range(20)], reward=0.7,
                       placement="home_hero", ts=4.0, reward_type="click"),
    ]
    raw = encode_samples(samples)
    assert orjson.loads(raw)["v"] == 2
    path = tmp_path / "learning.jsonl"
    broken = orjson.loads(raw) | {"x": "not base64 of 2 x 20 floats"}
    path.write_bytes(raw + b"\n" + orjson.dumps(broken) + b"\n")
    docs, problems = read_jsonl(path)
    assert [d["_where"] for d in docs] == ["learning.jsonl:1#0", "learning.jsonl:1#1"]
    assert docs[0]["x"] == samples[0].x  # float64 in binary: exact
    assert len(problems) == 1 and problems[0].startswith("learning.jsonl:2: a learning batch in columns")
    (d,) = join_samples(docs, catalogue)
    assert (d.action, d.probability, d.reward) == ("offer_bundle", 0.2, 0.7)


def test_the_eligible_set_logged_with_a_decision_is_the_one_candidates_choose_from(catalogue):
    # The catalogue's static set knows no dates, segments or score gates: decisions that showed a gated action
    # were dropped as "not eligible", and candidates could pick actions that were out of date.
    samples = [
        {**exposure("gated", action="offer_vip"), "mode": "explore", "eligible": ["offer_vip", "offer_10pct"]},
        {**exposure("dated"), "mode": "exploit", "eligible": ["offer_10pct", "offer_bundle"]},
        {**exposure("older"), "mode": "exploit"},  # logged by an engine that did not send the set
    ]
    log = join_samples(samples, catalogue)
    by_id = {d.decision_id: d for d in log}
    assert by_id["gated"].eligible == ("offer_vip", "offer_10pct") and by_id["dated"].eligible == (
        "offer_10pct", "offer_bundle")
    assert by_id["older"].eligible == tuple(catalogue.eligible("home_hero"))
    assert not log.report.problems and log.report.static_eligible == 1
    assert "1 decisions carry no eligible set" in " ".join(log.report.notes())


def test_decisions_chosen_for_sure_among_several_are_left_out(catalogue):
    # A placement with stickiness rules logs "exploit" with probability 1: IPS cannot reweigh such a choice
    # (a uniform candidate was estimated at 0.10 on a log whose every policy earns 0.5).
    samples = [
        {**exposure("sure", p=1.0), "mode": "exploit", "eligible": ["offer_10pct", "offer_bundle"]},
        {**exposure("only", p=1.0), "mode": "exploit", "eligible": ["offer_10pct"]},  # one choice: nothing else
        {**exposure("drawn", p=0.9), "mode": "exploit", "eligible": ["offer_10pct", "offer_bundle"]},
    ]
    log = join_samples(samples, catalogue)
    assert sorted(d.decision_id for d in log) == ["drawn", "only"] and log.report.deterministic == 1
    assert "left out 1 exploit decisions of placements with stickiness rules" in " ".join(log.report.notes())


def test_the_eligible_column_survives_the_learning_topic_and_older_messages_still_read():
    from contracts.decisions import decode_batch, encode_samples, sample_dicts

    samples = [LearningSample("exposure", "a", "offer_10pct", X, probability=0.5, eligible=["offer_10pct", "b"]),
               LearningSample("reward", "a", "offer_10pct", X, reward=1.0)]
    raw = encode_samples(samples)
    assert [s.eligible for s in decode_batch(raw).samples] == [["offer_10pct", "b"], None]
    assert [d["eligible"] for d in sample_dicts(orjson.loads(raw))] == [["offer_10pct", "b"], None]
    older = orjson.loads(encode_samples([LearningSample("exposure", "a", "offer_10pct", X)]))
    assert "eligible" not in older  # the column is only sent when some sample has a set
    assert decode_batch(orjson.dumps(older)).samples[0].eligible is None


# -- probability 1 among several actions: stickiness (left out) or an arbitration override (kept) ---------
OVERRIDE_CAT = Catalogue(
    {
        "free": Placement("free", "web"),  # no stickiness rules
        "kept": Placement("kept", "web", stickiness=StickinessSettings(max_changes_per_day=4)),
    },
    {
        "a": Action("a", "web", ("free", "kept"), 1.0, cost=0.2),
        "b": Action("b", "web", ("free", "kept"), 1.0),
    },
)


def engine_samples(placement: str, n: int, seed: int = 0, epsilon: float = 0.2) -> tuple[list[dict], list[float]]:
    """Learning samples made by the engine's decision path (policy.pipeline.decide_action), one new user
    per request: click rates a = 0.6u, b = 0.2 in context (1, u). The bandit's greedy action is a for
    u > 1/3; arbitration (ev = score − cost) overrides it for u < 2/3. The uniform draw (``epsilon``) is never
    overridden; without one (ε = 0) every decision logs p = 1."""
    rng = np.random.default_rng(seed)
    bandit = LinUCB(dim=2, seed=1, alpha=0.05, epsilon=epsilon, epsilon_min=epsilon)
    ctx = PolicyContext(OVERRIDE_CAT)
    samples, rewards = [], []
    for i in range(n):
        x = np.array([1.0, rng.random()])
        out = decide_action(
            PolicyRequest(f"u{i}", placement, float(i)), UserPolicyState(), ctx, lambda e, x=x: bandit.select(x, e)
        )
        r = float(rng.random() < (0.6 * x[1] if out.action == "a" else 0.2))
        bandit.update(x, out.action, r)
        rewards.append(r)
        samples.append({"kind": "exposure", "decision_id": f"d{i}", "action": out.action, "x": x.tolist(),
                        "probability": out.probability, "placement": placement, "ts": float(i),
                        "mode": out.mode.value, "eligible": out.trace["eligible"]})
        if r:
            samples.append({"kind": "reward", "decision_id": f"d{i}", "action": out.action, "x": x.tolist(),
                            "reward": r, "ts": i + 0.5})
    return samples, rewards


def test_arbitration_overrides_keep_the_uniform_draw_so_every_action_is_covered():
    samples, rewards = engine_samples("free", 4000)
    exposures = [s for s in samples if s["kind"] == "exposure"]
    assert all(s["probability"] < 1.0 for s in exposures)  # no decision is sure: the uniform draw stays
    # once the bandit has learned, a (greedy for u > 1/3, overridden for u < 2/3) is still shown there by the
    # uniform draw, with its ε/K
    overridden = [s for s in exposures[2000:] if 0.4 < s["x"][1] < 0.6 and s["action"] == "a"]
    assert len(overridden) > 20 and all(s["probability"] == pytest.approx(0.2 / 2) for s in overridden)
    log = join_samples(samples, OVERRIDE_CAT)
    assert len(log) == 4000 and log.report.overrides == 0
    for action, true_value in (("a", 0.3), ("b", 0.2)):  # a: 0.6u averaged over u ~ U(0, 1)
        est = evaluate(log, Constant([action]), ("ips",))["ips"]
        assert not est.warnings, est.warnings
        assert est.ci_low <= true_value <= est.ci_high


def test_arbitration_overrides_logged_with_probability_1_are_kept():
    # a bandit without exploration (ε = 0): arbitration's override is the logging policy's real p = 1
    samples, rewards = engine_samples("free", 4000, epsilon=0.0)
    overridden = sum(s["kind"] == "exposure" and s["probability"] == 1.0 for s in samples)
    assert overridden > 1000  # the case under test: many decisions logged for sure, none by stickiness
    log = join_samples(samples, OVERRIDE_CAT)
    assert len(log) == 4000 and log.report.deterministic == 0 and log.report.overrides == overridden
    assert log.rewards.mean() == pytest.approx(np.mean(rewards))  # the whole traffic, not a part of it
    notes = log.report.notes()
    assert not [n for n in notes if n.startswith("left out")]  # nothing left out, stickiness not blamed
    assert f"kept {overridden} decisions logged with probability 1" in " ".join(notes)
    # a candidate showing the overridden action where arbitration never does is not covered by the log
    est = evaluate(log, Constant(["a"]), ("ips",))["ips"]
    assert "support_not_covered" in [w.code for w in est.warnings]


def test_only_placements_with_stickiness_rules_have_their_sure_decisions_left_out():
    samples, _ = engine_samples("kept", 300)
    assert {s["mode"] for s in samples if s["kind"] == "exposure"} == {"exploit"}  # stickiness: no draws
    log = join_samples(samples, OVERRIDE_CAT)
    assert len(log) == 0 and log.report.deterministic == 300 and log.report.overrides == 0
    notes = " ".join(log.report.notes())
    assert "left out 300 exploit decisions of placements with stickiness rules" in notes
    # a placement the catalogue does not know: stickiness and an override cannot be told apart
    log = join_samples(
        [{**exposure("x", action="a", p=1.0, placement="gone"), "mode": "exploit", "eligible": ["a", "b"]}],
        OVERRIDE_CAT,
    )
    assert len(log) == 0 and log.report.undetermined == 1
    assert "placements the catalogue does not know" in " ".join(log.report.notes())


def test_a_log_left_without_decisions_says_what_was_read_why_each_group_went_and_what_to_do(catalogue):
    from ope.diagnostics import OPEError

    sticky = [
        {**exposure(f"s{i}", p=1.0, placement=placement), "mode": "exploit",
         "eligible": ["offer_10pct", "offer_bundle"]}
        for i, placement in enumerate(["home_hero"] * 3 + ["product_sidebar"] * 2)
    ]
    held = [{**exposure(f"h{i}", action="none", p=1.0), "mode": "holdout"} for i in range(4)]
    log = join_samples(sticky + held, catalogue)
    assert len(log) == 0 and log.report.exposures == 9
    with pytest.raises(OPEError) as err:
        evaluate(log, Constant(["offer_10pct"]))
    text = str(err.value)
    assert "9 exposures were read" in text
    assert "holdout: 4" in text  # left out by mode
    assert "5 exploit decisions of placements with stickiness rules (home_hero: 3, product_sidebar: 2)" in text
    assert "newsletter" in text  # the catalogue's placement without stickiness rules, where the bandit draws
    assert "[placement.stickiness]" in text  # the setting that gives random draws on the sticky ones
    assert "is the engine's learning topic" not in text  # it is: the decisions were all left out

    only_modes = join_samples([{**exposure("e", p=0.5), "mode": "explore"}], catalogue, modes=("exploit",))
    with pytest.raises(OPEError, match=r"1 exposures were read.*explore: 1.*--modes"):
        evaluate(only_modes, Constant(["offer_10pct"]))
    with pytest.raises(OPEError, match="is the engine's learning topic"):  # nothing read at all: the old advice
        evaluate(join_samples([], catalogue), Constant(["offer_10pct"]))


def test_lift_only_rewards_are_noted_only_when_they_explain_a_log_without_decision_rewards(catalogue):
    # beside decisions' rewards they are the lift's business: no note (they are not a problem of the log)
    mixed = join_samples([exposure("a"), reward("a", 1.0), reward("lift-x", 1.0, action="none")], catalogue)
    assert not any("lift" in note for note in mixed.report.notes())
    # when they are the only rewards read, a "no rewards" warning would puzzle: the note says what they are
    lift_only = join_samples(
        [exposure("a"), reward("lift-x", 1.0, action="none"), reward("lift-y", 0.5, action="none")], catalogue
    )
    notes = [note for note in lift_only.report.notes() if "lift" in note]
    assert len(notes) == 1 and "all 2 rewards read are lift-only" in notes[0]
    assert "export" not in notes[0] and "ignored" not in notes[0]
