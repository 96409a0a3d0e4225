"""Contextual bandit policies behind one base class; ``make_policy`` builds one by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bandits.base import Choice, Policy
from bandits.egreedy import EpsilonGreedy
from bandits.lints import LinTS
from bandits.linucb import LinUCB
from bandits.ridge import ArmStats, LinearPolicy

POLICIES: dict[str, Callable[..., Policy]] = {
    LinUCB.name: LinUCB,
    LinTS.name: LinTS,
    EpsilonGreedy.name: EpsilonGreedy,
}


def make_policy(name: str, dim: int, **params: Any) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return factory(dim=dim, **params)


__all__ = [
    "ArmStats",
    "Choice",
    "EpsilonGreedy",
    "LinTS",
    "LinUCB",
    "LinearPolicy",
    "POLICIES",
    "Policy",
    "make_policy",
]
