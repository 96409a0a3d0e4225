"""Disjoint LinUCB with Sherman–Morrison updates and an ε floor that keeps every probability > 0."""

from __future__ import annotations

import numpy as np

from bandits.base import Choice, Policy


class LinUCB(Policy):
    """Score = θₐ·x + α √(xᵀ Aₐ⁻¹ x); Aₐ⁻¹ is kept up to date with rank-one updates (no inversion).

    With probability ``epsilon`` the action is drawn uniformly from the eligible set instead, so the
    logged selection probability of every eligible action is at least ε/K (needed for off-policy
    evaluation). Ties on the best score are broken uniformly at random.
    """

    name = "linucb"

    def __init__(self, dim: int, alpha: float = 0.5, epsilon: float = 0.02, ridge: float = 1.0, seed: int = 0):
        super().__init__(dim, seed)
        if alpha < 0 or not 0 <= epsilon <= 1 or ridge <= 0:
            raise ValueError("need alpha >= 0, 0 <= epsilon <= 1 and ridge > 0")
        self.alpha = alpha
        self.epsilon = epsilon
        self.ridge = ridge
        self._A_inv = np.empty((0, dim, dim))
        self._b = np.empty((0, dim))
        self._theta = np.empty((0, dim))

    def _grow(self, n_arms: int) -> None:
        extra = n_arms - self._b.shape[0]
        eye = np.broadcast_to(np.eye(self.dim) / self.ridge, (extra, self.dim, self.dim))
        self._A_inv = np.concatenate([self._A_inv, eye])
        self._b = np.concatenate([self._b, np.zeros((extra, self.dim))])
        self._theta = np.concatenate([self._theta, np.zeros((extra, self.dim))])

    def _select(self, x: np.ndarray, actions: list[str], idx: np.ndarray) -> Choice:
        ax = self._A_inv[idx] @ x  # (k, d)
        width = np.sqrt(np.maximum(ax @ x, 0.0))
        scores = self._theta[idx] @ x + self.alpha * width
        k = len(actions)
        top = np.flatnonzero(scores == scores.max())
        best = int(top[0]) if len(top) == 1 else int(self._rng.choice(top))
        probs = np.full(k, self.epsilon / k)
        probs[top] += (1.0 - self.epsilon) / len(top)
        pick = best if self._rng.random() >= self.epsilon else int(self._rng.integers(k))
        choice = self._finish(actions, scores, probs, pick)
        choice.greedy = actions[best]
        return choice

    def _expose(self, x: np.ndarray, arm: int) -> None:
        a_inv = self._A_inv[arm]
        ax = a_inv @ x
        a_inv -= np.outer(ax, ax) / (1.0 + x @ ax)
        self._theta[arm] = a_inv @ self._b[arm]

    def _reward(self, x: np.ndarray, arm: int, reward: float) -> None:
        self._b[arm] += reward * x
        self._theta[arm] = self._A_inv[arm] @ self._b[arm]
