"""Contextual bandit policies behind one base class; ``make_policy`` builds one by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bandits.base import Choice, Policy
from bandits.linucb import LinUCB

POLICIES: dict[str, Callable[..., Policy]] = {"linucb": LinUCB}


def make_policy(name: str, dim: int, **params: Any) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return factory(dim=dim, **params)


__all__ = ["Choice", "Policy", "LinUCB", "POLICIES", "make_policy"]
