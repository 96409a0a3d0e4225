"""Per-action ridge regression of the reward on the context, and cross-fitted predictions for DR.

Each action gets its own linear model of (reward − mean reward) on x, shrunk toward the overall mean.
How hard to shrink is chosen per action by exact leave-one-out error over a grid of ridge penalties
(closed form from one SVD), because rewards are sparse: with few rewarded decisions the best model is
close to the mean, with many it can follow the context. An action with no data predicts the mean.
Predictions are clipped to the range of rewards seen in training, as a linear model extrapolates past
what rewards can be.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RIDGE_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def _loo_ridge(x: np.ndarray, y: np.ndarray, grid: Sequence[float]) -> tuple[np.ndarray, float]:
    """Coefficients for the penalty in ``grid`` with the smallest leave-one-out squared error."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    best: tuple[float, float] | None = None
    for lam in grid:
        shrink = s**2 / (s**2 + lam)
        fitted = u @ (shrink * uty)
        leverage = (u**2) @ shrink
        loo = (y - fitted) / np.maximum(1.0 - leverage, 1e-9)
        err = float((loo**2).mean())
        if best is None or err < best[0]:
            best = (err, lam)
    assert best is not None
    lam = best[1]
    theta = vt.T @ (s / (s**2 + lam) * uty)
    return theta, lam


class RidgeRewardModel:
    """q̂(x, a) = mean + x·θₐ, θₐ the ridge solution for (rₐ − mean) with a penalty chosen per action."""

    def __init__(self, n_actions: int, ridge_grid: Sequence[float] = RIDGE_GRID) -> None:
        if n_actions < 1 or not ridge_grid or min(ridge_grid) <= 0:
            raise ValueError(
                f"need n_actions >= 1 and positive ridge penalties, got {n_actions} and {ridge_grid}"
            )
        self.n_actions = n_actions
        self.ridge_grid = tuple(ridge_grid)
        self._mean = 0.0
        self._low = 0.0
        self._high = 0.0
        self._theta: np.ndarray | None = None
        self._chosen: list[float | None] = []

    @property
    def chosen_ridge(self) -> list[float | None]:
        """The penalty picked for each action (None: no data, predicts the mean)."""
        return list(self._chosen)

    def fit(self, x: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> RidgeRewardModel:
        """``actions`` are column indices in 0..n_actions-1."""
        x = np.asarray(x, dtype=float)
        rewards = np.asarray(rewards, dtype=float)
        self._mean = float(rewards.mean()) if len(rewards) else 0.0
        self._low = float(rewards.min()) if len(rewards) else 0.0
        self._high = float(rewards.max()) if len(rewards) else 0.0
        theta = np.zeros((self.n_actions, x.shape[1]))
        self._chosen = [None] * self.n_actions
        for a in range(self.n_actions):
            rows = actions == a
            if rows.sum() < 2:
                continue
            theta[a], self._chosen[a] = _loo_ridge(x[rows], rewards[rows] - self._mean, self.ridge_grid)
        self._theta = theta
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted reward of every action for every row of x: shape (n, n_actions)."""
        if self._theta is None:
            raise RuntimeError("RidgeRewardModel.predict() before fit()")
        q = self._mean + np.asarray(x, dtype=float) @ self._theta.T
        return np.clip(q, self._low, self._high)


def cross_fit_predictions(
    x: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    n_actions: int,
    folds: int = 2,
    ridge_grid: Sequence[float] = RIDGE_GRID,
    seed: int = 0,
) -> np.ndarray:
    """Predictions for each row from a model that never saw that row (``folds``-fold cross-fitting).

    Fitting and predicting on the same rows would let the model's errors correlate with the rewards it
    corrects, which biases DR; cross-fitting keeps each row's correction term honest.
    """
    n = len(rewards)
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    if n < folds:
        raise ValueError(f"cross-fitting with {folds} folds needs at least {folds} decisions, got {n}")
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(n) % folds
    q = np.empty((n, n_actions))
    for k in range(folds):
        held_out = fold_of == k
        model = RidgeRewardModel(n_actions, ridge_grid).fit(
            x[~held_out], actions[~held_out], rewards[~held_out]
        )
        q[held_out] = model.predict(x[held_out])
    return q
