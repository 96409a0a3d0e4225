"""Per-action ridge regression of the reward on the context, and cross-fitted predictions for DR.

Each action gets its own linear model of (reward − mean reward) on x, shrunk toward the overall mean by
the ridge penalty, so an action with little data predicts close to the mean and an action with none
predicts the mean exactly. Predictions are clipped to the range of rewards seen in training, because a
linear model extrapolates past what rewards can be.
"""

from __future__ import annotations

import numpy as np


class RidgeRewardModel:
    """q̂(x, a) = mean + x·θₐ with θₐ = (XₐᵀXₐ + ridge·I)⁻¹ Xₐᵀ(rₐ − mean)."""

    def __init__(self, n_actions: int, ridge: float = 1.0) -> None:
        if n_actions < 1 or ridge <= 0:
            raise ValueError(f"need n_actions >= 1 and ridge > 0, got {n_actions} and {ridge}")
        self.n_actions = n_actions
        self.ridge = ridge
        self._mean = 0.0
        self._low = 0.0
        self._high = 0.0
        self._theta: np.ndarray | None = None

    def fit(self, x: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> RidgeRewardModel:
        """``actions`` are column indices in 0..n_actions-1."""
        x = np.asarray(x, dtype=float)
        dim = x.shape[1]
        self._mean = float(rewards.mean()) if len(rewards) else 0.0
        self._low = float(rewards.min()) if len(rewards) else 0.0
        self._high = float(rewards.max()) if len(rewards) else 0.0
        theta = np.zeros((self.n_actions, dim))
        eye = self.ridge * np.eye(dim)
        for a in range(self.n_actions):
            rows = actions == a
            if not rows.any():
                continue
            xa = x[rows]
            theta[a] = np.linalg.solve(xa.T @ xa + eye, xa.T @ (rewards[rows] - self._mean))
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
    ridge: float = 1.0,
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
        model = RidgeRewardModel(n_actions, ridge).fit(x[~held_out], actions[~held_out], rewards[~held_out])
        q[held_out] = model.predict(x[held_out])
    return q
