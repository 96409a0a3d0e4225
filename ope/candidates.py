"""Candidate policies for OPE, built from small JSON configs.

A candidate must be a *fixed* policy while it is evaluated: a bandit that learned from the very decisions
it is scored on would be judged on data it has memorised (leakage). So candidates that learn are trained
on the first half of the log (by event time) and every candidate is then evaluated on the second half.

Configs (``name`` is optional everywhere and labels the candidate in tables and plots):

    {"kind": "uniform"}                                   every eligible action equally likely
    {"kind": "constant", "action": "offer_bundle"}        always this action; a list is a preference
                                                          order (first eligible one wins); where none is
                                                          eligible the candidate is uniform
    {"kind": "bandit", "policy": "linucb", "params": {"alpha": 0.5, "epsilon": 0.05},
     "train_on": "first_half"}                            a bandits/ policy trained on the first half,
                                                          then frozen, and run as the engine runs it:
                                                          its choice goes through arbitration (below)
    {"kind": "greedy_model", "epsilon": 0.0, "train_on": "first_half"}
                                                          argmax of a per-action ridge reward model fitted
                                                          on the first half, with an ε-uniform floor;
                                                          "ridge": a fixed penalty (default: chosen by
                                                          leave-one-out error)

The engine never shows the bandit's pick as it is: arbitration (policy/arbitration.py) ranks the eligible
actions by expected value (score × value scale × boost − cost) and shows the ev winner unless the pick came
from the bandit's uniform exploration draw, and the logged probability is that of bandit + arbitration. A
``bandit`` candidate is scored the same way: its target probability of an action is the probability
arbitration gives it (``policy.arbitration.shown_probabilities``), with the catalogue's values and costs
and the engine's arbitration settings, so a candidate identical to the deployed bandit estimates the
logged value. What the log cannot say is left out and stated: boost levers active when the log was made
(they are not in the learning samples) are not applied, and on placements with stickiness the engine
decides without the bandit's draw from the user's incumbent (not logged either); such decisions are not
evaluated by default (ope/log.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bandits import POLICIES, make_policy
from bandits.base import Choice, Policy
from ope.diagnostics import OPEError
from ope.log import DecisionLog
from ope.reward_model import RIDGE_GRID, RidgeRewardModel
from policy.arbitration import ArbitrationConfig, shown_probabilities
from policy.catalogue import Catalogue
from policy.pipeline import PolicyContext

TRAIN_SPLITS = {"first_half": 0.5}  # the only training split: evaluate on what the candidate never saw


def _engine_arbitration() -> ArbitrationConfig:
    """The arbitration settings the engine runs with: streams/app.py builds its PolicyContext with the
    default (no setting changes it), so read that default rather than repeat it."""
    default = PolicyContext.__dataclass_fields__["arbitration"].default
    if not isinstance(default, ArbitrationConfig):
        raise TypeError("policy.pipeline.PolicyContext.arbitration has no default ArbitrationConfig")
    return default


ENGINE_ARBITRATION = _engine_arbitration()


class CandidateConfigError(ValueError):
    """A candidate config cannot be used; the message names the field to fix."""


class Uniform:
    def __init__(self, name: str = "uniform") -> None:
        self.name = name

    def target_probs(self, x: np.ndarray, eligible: Sequence[str]) -> dict[str, float]:
        return {a: 1.0 / len(eligible) for a in eligible}


class Constant:
    def __init__(self, actions: Sequence[str], name: str = "constant") -> None:
        self.actions = tuple(actions)
        self.name = name

    def target_probs(self, x: np.ndarray, eligible: Sequence[str]) -> dict[str, float]:
        for a in self.actions:
            if a in eligible:
                return {a: 1.0}
        return {a: 1.0 / len(eligible) for a in eligible}


def arbitrated_probs(
    choice: Choice, eligible: Sequence[str], catalogue: Catalogue, config: ArbitrationConfig = ENGINE_ARBITRATION
) -> dict[str, float]:
    """The probability of each eligible action being shown when ``choice``'s draw goes through arbitration
    (``shown_probabilities``: the uniform draw as drawn, the greedy branch arbitrated). These are exactly the
    probabilities the engine logs for each action, and they sum to the bandit's total, 1."""
    shown = shown_probabilities(choice, eligible, catalogue, None, config)
    return {a: shown.get(a, 0.0) for a in eligible}


class FrozenBandit:
    """A bandits/ policy after training, followed by arbitration as the engine runs it."""

    def __init__(
        self,
        policy: Policy,
        name: str,
        catalogue: Catalogue,
        arbitration: ArbitrationConfig = ENGINE_ARBITRATION,
    ) -> None:
        self.policy = policy
        self.name = name
        self.catalogue = catalogue
        self.arbitration = arbitration

    def target_probs(self, x: np.ndarray, eligible: Sequence[str]) -> dict[str, float]:
        eligible = list(eligible)
        unknown = [a for a in eligible if a not in self.catalogue.actions]
        if unknown:
            raise OPEError(
                f"candidate {self.name!r}: eligible actions {unknown} are not in the catalogue, so their value "
                "and cost are unknown and the bandit cannot be run through arbitration as the engine runs it; "
                "pass the catalogue the engine ran with (--catalogue)"
            )
        choice = self.policy.select(x, eligible)
        if not choice.probability_list:
            raise OPEError(
                f"candidate {self.name!r}: the policy gives no selection probabilities, so its probability "
                "after arbitration is unknown"
            )
        return arbitrated_probs(choice, eligible, self.catalogue, self.arbitration)


class GreedyModel:
    """Best action by a reward model, with probability ε spread uniformly over the eligible actions."""

    def __init__(self, model: RidgeRewardModel, actions: Sequence[str], epsilon: float, name: str) -> None:
        self.model = model
        self.actions = tuple(actions)
        self.epsilon = epsilon
        self.name = name
        self._column = {a: i for i, a in enumerate(self.actions)}

    def target_probs(self, x: np.ndarray, eligible: Sequence[str]) -> dict[str, float]:
        q = self.model.predict(x[None, :])[0]
        scores = [q[self._column[a]] if a in self._column else -np.inf for a in eligible]
        best = eligible[int(np.argmax(scores))]
        probs = {a: self.epsilon / len(eligible) for a in eligible}
        probs[best] += 1.0 - self.epsilon
        return probs


# -- building from configs ------------------------------------------------------------------------------
def _check_keys(config: dict[str, Any], allowed: set[str]) -> None:
    extra = set(config) - allowed - {"kind", "name"}
    if extra:
        raise CandidateConfigError(
            f"candidate {config.get('kind')!r}: unknown fields {sorted(extra)}; "
            f"allowed are {sorted(allowed | {'kind', 'name'})}"
        )


def _build_uniform(config: dict[str, Any], train: DecisionLog | None, catalogue: Catalogue | None) -> Uniform:
    _check_keys(config, set())
    return Uniform(config.get("name", "uniform"))


def _build_constant(
    config: dict[str, Any], train: DecisionLog | None, catalogue: Catalogue | None
) -> Constant:
    _check_keys(config, {"action"})
    action = config.get("action")
    actions = [action] if isinstance(action, str) else action
    if not actions or not isinstance(actions, list) or not all(isinstance(a, str) and a for a in actions):
        raise CandidateConfigError(
            "candidate 'constant': field 'action' must be an action id or a list of them "
            'in order of preference, e.g. {"kind": "constant", "action": "offer_bundle"}'
        )
    return Constant(actions, config.get("name", f"constant:{'|'.join(actions)}"))


def _train_log(config: dict[str, Any], train: DecisionLog | None) -> DecisionLog:
    if train is None or len(train) == 0:
        raise CandidateConfigError(
            f"candidate {config['kind']!r} learns from the log's first half, and this log is too short to "
            f"split: its first half holds {0 if train is None else len(train)} decisions; a trained candidate "
            "needs a log of at least 2 decisions (4 with the dr estimator, whose cross-fitting needs 2 in the "
            "later half)"
        )
    return train


def _bandit_spec(config: dict[str, Any], catalogue: Catalogue | None) -> tuple[str, dict[str, Any]]:
    """A ``bandit`` config's policy name and params, checked without a log (the policy is tried on 1 feature)."""
    _check_keys(config, {"policy", "params", "train_on"})
    name = config.get("policy")
    if not isinstance(name, str) or name not in POLICIES:
        raise CandidateConfigError(
            f"candidate 'bandit': field 'policy' must be one of {sorted(POLICIES)}, got {name!r}"
        )
    params = config.get("params", {})
    if not isinstance(params, dict):
        raise CandidateConfigError("candidate 'bandit': field 'params' must be an object of policy arguments")
    _make_bandit(name, 1, params)
    if catalogue is None:
        raise CandidateConfigError(
            "candidate 'bandit' needs the catalogue the engine ran with: the engine runs the bandit's choice "
            "through arbitration (action values and costs), and the candidate is scored the same way"
        )
    return name, params


def _make_bandit(name: str, dim: int, params: dict[str, Any]) -> Policy:
    try:
        return make_policy(name, dim=dim, **params)
    except (TypeError, ValueError) as exc:
        raise CandidateConfigError(
            f"candidate 'bandit': policy {name!r} rejects params {params}: {exc}"
        ) from None


def _build_bandit(
    config: dict[str, Any], train: DecisionLog | None, catalogue: Catalogue | None
) -> FrozenBandit:
    name, params = _bandit_spec(config, catalogue)
    assert catalogue is not None  # _bandit_spec refuses a bandit without one
    log = _train_log(config, train)
    policy = _make_bandit(name, log.decisions[0].x.shape[0], params)
    for d in log:
        policy.update(d.x, d.action, d.reward)
    return FrozenBandit(policy, config.get("name", f"bandit:{name}"), catalogue)


def _greedy_spec(config: dict[str, Any]) -> tuple[float, float | None]:
    """A ``greedy_model`` config's ε and ridge penalty, checked without a log."""
    _check_keys(config, {"epsilon", "ridge", "train_on"})
    epsilon = config.get("epsilon", 0.0)
    ridge = config.get("ridge")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 <= epsilon <= 1:
        raise CandidateConfigError(
            f"candidate 'greedy_model': field 'epsilon' must be in [0, 1], got {epsilon!r}"
        )
    if ridge is not None and (isinstance(ridge, bool) or not isinstance(ridge, int | float) or ridge <= 0):
        raise CandidateConfigError(f"candidate 'greedy_model': field 'ridge' must be > 0, got {ridge!r}")
    return float(epsilon), None if ridge is None else float(ridge)


def _build_greedy_model(
    config: dict[str, Any], train: DecisionLog | None, catalogue: Catalogue | None
) -> GreedyModel:
    epsilon, ridge = _greedy_spec(config)
    log = _train_log(config, train)
    actions = sorted({a for d in log for a in d.eligible})
    column = {a: i for i, a in enumerate(actions)}
    model = RidgeRewardModel(len(actions), RIDGE_GRID if ridge is None else (ridge,)).fit(
        log.x, np.array([column[a] for a in log.actions]), log.rewards
    )
    return GreedyModel(model, actions, epsilon, config.get("name", "greedy_model"))


CANDIDATE_KINDS: dict[str, Callable[[dict[str, Any], DecisionLog | None, Catalogue | None], Any]] = {
    "uniform": _build_uniform,
    "constant": _build_constant,
    "bandit": _build_bandit,
    "greedy_model": _build_greedy_model,
}
TRAINED_KINDS = {"bandit", "greedy_model"}


def needs_training(config: dict[str, Any]) -> bool:
    if config.get("kind") not in TRAINED_KINDS:
        return False
    split = config.get("train_on", "first_half")
    if split not in TRAIN_SPLITS:
        raise CandidateConfigError(
            f"candidate {config['kind']!r}: field 'train_on' must be one of {sorted(TRAIN_SPLITS)}, "
            f"got {split!r}; "
            "a candidate trained on the decisions it is evaluated on would be scored on what it memorised"
        )
    return True


def build_candidate(
    config: dict[str, Any], train: DecisionLog | None = None, catalogue: Catalogue | None = None
) -> Any:
    """The candidate of ``config``; learners train on ``train``; ``catalogue`` is the one the engine ran
    with (a ``bandit`` candidate needs it for arbitration)."""
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in CANDIDATE_KINDS:
        raise CandidateConfigError(
            f"candidate config needs field 'kind', one of {sorted(CANDIDATE_KINDS)}; got {kind!r}"
        )
    needs_training(config)
    return CANDIDATE_KINDS[kind](config, train, catalogue)


def check_config(config: dict[str, Any], catalogue: Catalogue | None = None) -> None:
    """Refuse a config ``build_candidate`` would refuse for its own fields, without a log: so a mistake is
    reported before a long log is read. (What only the log can tell, such as a training half too short,
    is found when the candidate is built.)"""
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in CANDIDATE_KINDS:
        raise CandidateConfigError(
            f"candidate config needs field 'kind', one of {sorted(CANDIDATE_KINDS)}; got {kind!r}"
        )
    needs_training(config)
    if kind == "bandit":
        _bandit_spec(config, catalogue)
    elif kind == "greedy_model":
        _greedy_spec(config)
    else:
        CANDIDATE_KINDS[kind](config, None, catalogue)


def load_config(source: str) -> dict[str, Any]:
    """A candidate config from a JSON file, or inline JSON when ``source`` starts with '{'."""
    text = source if source.lstrip().startswith("{") else None
    if text is None:
        path = Path(source)
        if not path.is_file():
            raise CandidateConfigError(
                f"{source}: no such candidate config file; pass a JSON file such as "
                '{"kind": "uniform"} or the JSON itself'
            )
        text = path.read_text()
    try:
        config = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CandidateConfigError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CandidateConfigError(f"{source}: a candidate config must be a JSON object with a 'kind' field")
    return config


def plan(
    log: DecisionLog, configs: Sequence[dict[str, Any]], catalogue: Catalogue | None = None
) -> tuple[list[Any], DecisionLog, str]:
    """Build every candidate and choose the evaluation log they all share.

    When any candidate learns, all are evaluated on the second half (so their numbers compare); otherwise
    on the whole log. ``catalogue`` is the one the engine ran with (``bandit`` candidates need it). Returns
    (candidates, evaluation log, a sentence saying which).
    """
    if any(needs_training(c) for c in configs):
        train, held_out = log.split(TRAIN_SPLITS["first_half"])
        candidates = [build_candidate(c, train, catalogue) for c in configs]
        note = (
            f"trained candidates learned from the first {len(train)} decisions; every candidate is "
            f"evaluated on the later {len(held_out)}"
        )
    else:
        candidates, held_out = [build_candidate(c, None, catalogue) for c in configs], log
        note = f"every candidate is evaluated on all {len(log)} decisions"
    if any(isinstance(c, FrozenBandit) for c in candidates):
        note += (
            "; bandit candidates are run through arbitration as the engine runs it (catalogue values and "
            f"costs, reward unit {ENGINE_ARBITRATION.reward_unit!r}), without the boost levers active when "
            "the log was made (the log does not hold them)"
        )
    return candidates, held_out, note
