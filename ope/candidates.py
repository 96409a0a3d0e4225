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
                                                          then frozen; its Choice.probabilities are used
    {"kind": "greedy_model", "epsilon": 0.0, "train_on": "first_half"}
                                                          argmax of a per-action ridge reward model fitted
                                                          on the first half, with an ε-uniform floor;
                                                          "ridge": a fixed penalty (default: chosen by
                                                          leave-one-out error)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bandits import POLICIES, make_policy
from bandits.base import Policy
from ope.log import DecisionLog
from ope.reward_model import RIDGE_GRID, RidgeRewardModel

TRAIN_SPLITS = {"first_half": 0.5}  # the only training split: evaluate on what the candidate never saw


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


class FrozenBandit:
    """A bandits/ policy after training; only its selection probabilities are read."""

    def __init__(self, policy: Policy, name: str) -> None:
        self.policy = policy
        self.name = name

    def target_probs(self, x: np.ndarray, eligible: Sequence[str]) -> dict[str, float]:
        return dict(self.policy.select(x, list(eligible)).probabilities)


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


def _build_uniform(config: dict[str, Any], train: DecisionLog | None) -> Uniform:
    _check_keys(config, set())
    return Uniform(config.get("name", "uniform"))


def _build_constant(config: dict[str, Any], train: DecisionLog | None) -> Constant:
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
            f"candidate {config['kind']!r} needs a training log (the first half); "
            "the log is empty or too short to split"
        )
    return train


def _build_bandit(config: dict[str, Any], train: DecisionLog | None) -> FrozenBandit:
    _check_keys(config, {"policy", "params", "train_on"})
    name = config.get("policy")
    if name not in POLICIES:
        raise CandidateConfigError(
            f"candidate 'bandit': field 'policy' must be one of {sorted(POLICIES)}, got {name!r}"
        )
    params = config.get("params", {})
    if not isinstance(params, dict):
        raise CandidateConfigError("candidate 'bandit': field 'params' must be an object of policy arguments")
    log = _train_log(config, train)
    try:
        policy = make_policy(name, dim=log.decisions[0].x.shape[0], **params)
    except (TypeError, ValueError) as exc:
        raise CandidateConfigError(
            f"candidate 'bandit': policy {name!r} rejects params {params}: {exc}"
        ) from None
    for d in log:
        policy.update(d.x, d.action, d.reward)
    return FrozenBandit(policy, config.get("name", f"bandit:{name}"))


def _build_greedy_model(config: dict[str, Any], train: DecisionLog | None) -> GreedyModel:
    _check_keys(config, {"epsilon", "ridge", "train_on"})
    epsilon = config.get("epsilon", 0.0)
    ridge = config.get("ridge")
    if not isinstance(epsilon, int | float) or not 0 <= epsilon <= 1:
        raise CandidateConfigError(
            f"candidate 'greedy_model': field 'epsilon' must be in [0, 1], got {epsilon!r}"
        )
    if ridge is not None and (not isinstance(ridge, int | float) or ridge <= 0):
        raise CandidateConfigError(f"candidate 'greedy_model': field 'ridge' must be > 0, got {ridge!r}")
    log = _train_log(config, train)
    actions = sorted({a for d in log for a in d.eligible})
    column = {a: i for i, a in enumerate(actions)}
    model = RidgeRewardModel(len(actions), RIDGE_GRID if ridge is None else (float(ridge),)).fit(
        log.x, np.array([column[a] for a in log.actions]), log.rewards
    )
    return GreedyModel(model, actions, float(epsilon), config.get("name", "greedy_model"))


CANDIDATE_KINDS: dict[str, Callable[[dict[str, Any], DecisionLog | None], Any]] = {
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


def build_candidate(config: dict[str, Any], train: DecisionLog | None = None) -> Any:
    kind = config.get("kind")
    if kind not in CANDIDATE_KINDS:
        raise CandidateConfigError(
            f"candidate config needs field 'kind', one of {sorted(CANDIDATE_KINDS)}; got {kind!r}"
        )
    needs_training(config)
    return CANDIDATE_KINDS[kind](config, train)


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


def plan(log: DecisionLog, configs: Sequence[dict[str, Any]]) -> tuple[list[Any], DecisionLog, str]:
    """Build every candidate and choose the evaluation log they all share.

    When any candidate learns, all are evaluated on the second half (so their numbers compare); otherwise
    on the whole log. Returns (candidates, evaluation log, a sentence saying which).
    """
    if any(needs_training(c) for c in configs):
        train, held_out = log.split(TRAIN_SPLITS["first_half"])
        candidates = [build_candidate(c, train) for c in configs]
        note = (
            f"trained candidates learned from the first {len(train)} decisions; every candidate is "
            f"evaluated on the later {len(held_out)}"
        )
        return candidates, held_out, note
    return (
        [build_candidate(c) for c in configs],
        log,
        f"every candidate is evaluated on all {len(log)} decisions",
    )
