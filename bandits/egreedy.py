"""ε-greedy over per-arm ridge regressions (the same additive statistics as LinUCB)."""

from __future__ import annotations

import numpy as np

from bandits.base import Choice
from bandits.explore import greedy_pick
from bandits.ridge import LinearPolicy


class EpsilonGreedy(LinearPolicy):
    """Exploit the best ridge estimate θₐ·x; with probability ``epsilon`` pick uniformly instead.

    Probabilities are exact: ε/K for every eligible action plus (1−ε)/|ties| for the best ones.
    A new action starts at θ = 0 (so it ties with other unlearned actions) and is reached through ε.
    """

    name = "egreedy"
    decision_params = ("epsilon",)

    def __init__(
        self, dim: int, epsilon: float = 0.05, ridge: float = 1.0, seed: int = 0, refresh_every: int = 512
    ) -> None:
        if not 0 <= epsilon <= 1:
            raise ValueError(f"need 0 <= epsilon <= 1, got {epsilon}")
        super().__init__(dim, ridge=ridge, seed=seed, refresh_every=refresh_every)
        self.epsilon = epsilon

    def _select(self, x: np.ndarray, actions: tuple[str, ...], idx: np.ndarray | None) -> Choice:
        scores = self._means(x, idx).tolist()
        eps, u = self.epsilon, self._rng.random()
        pick, best, probs = greedy_pick(scores, eps, u)
        return self._choice(actions, scores, probs, pick, best, None, u < eps, eps / len(scores))

    def _prepare(self, xs: np.ndarray) -> list[list[float]]:
        return (xs @ self._stack[len(self._since_refresh) * self.dim :].T).tolist()

    def _select_prepared(self, rows: list[list[float]], row: int, actions: tuple[str, ...],
                         idx: np.ndarray | None) -> Choice:
        scores = rows[row] if idx is None else [rows[row][a] for a in idx.tolist()]
        eps, u = self.epsilon, self._rng.random()
        pick, best, probs = greedy_pick(scores, eps, u)
        return self._choice(actions, scores, probs, pick, best, None, u < eps, eps / len(scores))
