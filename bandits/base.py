"""The policy extension point: ``select()`` enforces the shared rules, subclasses fill ``_select()``.

Learning is split in two additive halves so delayed rewards need no timers:
``expose(x, a)`` when action a is shown in context x, ``reward(x, a, r)`` when (and if) its reward
arrives. For linear policies expose adds x xᵀ to A and reward adds r·x to b, so the order and the
worker they happen on do not matter. ``update(x, a, r)`` is both at once.
"""

from __future__ import annotations

import io
import pickle
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Choice:
    """What a policy picked, how likely that pick was, and the scores behind it."""

    action: str
    probability: float
    greedy: str  # the action with the best score (action != greedy means exploration)
    scores: dict[str, float] = field(default_factory=dict)
    probabilities: dict[str, float] = field(default_factory=dict)

    @property
    def explored(self) -> bool:
        return self.action != self.greedy


class Policy(ABC):
    """A contextual bandit over a changing set of string-named actions."""

    name: str = "policy"

    def __init__(self, dim: int, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._index: dict[str, int] = {}
        self._n_updates = 0

    # -- public API ---------------------------------------------------------------------------
    @property
    def actions(self) -> list[str]:
        return list(self._index)

    @property
    def version(self) -> int:
        """Number of learning steps applied; identifies the statistics a decision was made with."""
        return self._n_updates

    def select(self, x: np.ndarray, actions: Sequence[str]) -> Choice:
        """Choose among ``actions`` (the eligible set of this request) for context ``x``."""
        if not actions:
            raise ValueError("select() needs at least one eligible action")
        x = self._check_x(x)
        idx = np.fromiter((self._arm(a) for a in actions), dtype=np.intp, count=len(actions))
        choice = self._select(x, list(actions), idx)
        return choice

    def expose(self, x: np.ndarray, action: str) -> None:
        x = self._check_x(x)
        self._expose(x, self._arm(action))
        self._n_updates += 1

    def reward(self, x: np.ndarray, action: str, reward: float) -> None:
        if not np.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        x = self._check_x(x)
        self._reward(x, self._arm(action), float(reward))
        self._n_updates += 1

    def update(self, x: np.ndarray, action: str, reward: float) -> None:
        self.expose(x, action)
        if reward:
            self.reward(x, action, reward)

    def snapshot(self) -> bytes:
        buf = io.BytesIO()
        pickle.dump(self, buf, protocol=pickle.HIGHEST_PROTOCOL)
        return buf.getvalue()

    @staticmethod
    def restore(blob: bytes) -> Policy:
        policy = pickle.loads(blob)
        if not isinstance(policy, Policy):
            raise TypeError(f"snapshot holds a {type(policy).__name__}, not a Policy")
        return policy

    # -- helpers for subclasses ---------------------------------------------------------------
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"context must have shape ({self.dim},), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("context holds NaN or infinity")
        return x

    def _arm(self, action: str) -> int:
        i = self._index.get(action)
        if i is None:
            i = len(self._index)
            self._index[action] = i
            self._grow(i + 1)
        return i

    def _finish(self, actions: list[str], scores: np.ndarray, probs: np.ndarray, pick: int) -> Choice:
        best = int(np.argmax(scores))
        return Choice(
            action=actions[pick],
            probability=float(probs[pick]),
            greedy=actions[best],
            scores={a: float(s) for a, s in zip(actions, scores, strict=True)},
            probabilities={a: float(p) for a, p in zip(actions, probs, strict=True)},
        )

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _grow(self, n_arms: int) -> None:
        """Make room for statistics of ``n_arms`` arms (new arms start cold)."""

    @abstractmethod
    def _select(self, x: np.ndarray, actions: list[str], idx: np.ndarray) -> Choice: ...

    @abstractmethod
    def _expose(self, x: np.ndarray, arm: int) -> None: ...

    @abstractmethod
    def _reward(self, x: np.ndarray, arm: int, reward: float) -> None: ...
