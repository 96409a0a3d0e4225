"""Linear Thompson sampling with a logged selection probability that is exact for what it plays."""

from __future__ import annotations

import numpy as np

from bandits.base import Choice
from bandits.ridge import LinearPolicy


class LinTS(LinearPolicy):
    """Per arm the posterior θ̃ₐ ~ N(θₐ, α² Aₐ⁻¹); play the arm whose sampled score θ̃ₐ·x is best.

    Sampling: only the score θ̃ₐ·x decides, and for the context at hand it is exactly
    N(θₐ·x, α² xᵀAₐ⁻¹x), independent across arms. So the scores are drawn directly from these
    one-dimensional normals, which gives the same distribution of picks as drawing θ̃ₐ through a
    Cholesky factor of Aₐ⁻¹, at the cost of LinUCB (one product with the Aₐ⁻¹ stack, kept by
    Sherman–Morrison) and with no factor to maintain or re-factorise.

    Logged probability: ``n_draws`` score vectors are drawn at once (vectorised, from the policy's own
    seeded generator); p̂ₐ is the share of draws that arm a wins, and the played arm is the winner of
    one draw chosen uniformly at random. Given the draws, arm a is played with probability exactly p̂ₐ,
    and marginally the pick is a plain Thompson sample. With the ε floor (uniform pick with
    probability ε) the logged ε/K + (1−ε)·p̂ₐ is therefore the true selection probability of the
    procedure (> 0 for every eligible arm, so IPS stays unbiased); as an estimate of the idealised
    Thompson probability, p̂ₐ has standard deviation √(p(1−p)/n) ≤ 0.044 at n = 128.

    ``scores`` in the returned Choice are the posterior means θₐ·x; ``greedy`` is their argmax.
    """

    name = "lints"
    decision_params = ("alpha", "epsilon", "n_draws")

    def __init__(
        self,
        dim: int,
        alpha: float = 0.5,
        epsilon: float = 0.02,
        n_draws: int = 128,
        ridge: float = 1.0,
        seed: int = 0,
        refresh_every: int = 512,
    ) -> None:
        if not alpha >= 0 or not 0 <= epsilon <= 1 or n_draws < 1:
            raise ValueError(
                f"need alpha >= 0, 0 <= epsilon <= 1 and n_draws >= 1, got {alpha}, {epsilon}, {n_draws}"
            )
        super().__init__(dim, ridge=ridge, seed=seed, refresh_every=refresh_every)
        self.alpha = alpha
        self.epsilon = epsilon
        self.n_draws = n_draws

    def _select(self, x: np.ndarray, actions: tuple[str, ...], idx: np.ndarray | None) -> Choice:
        mean, var = self._moments(x, idx)
        return self._sample(mean, var, actions)

    def _prepare(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._moments_many(xs)

    def _select_prepared(self, rows: tuple[np.ndarray, np.ndarray], row: int, actions: tuple[str, ...],
                         idx: np.ndarray | None) -> Choice:
        mean, var = rows[0][row], rows[1][row]
        if idx is not None:
            mean, var = mean[idx], var[idx]
        return self._sample(mean.copy(), var.copy(), actions)

    def _sample(self, mean: np.ndarray, var: np.ndarray, actions: tuple[str, ...]) -> Choice:
        """Thompson draws from the per-arm normals N(mean, α² var) (``var`` is clipped in place)."""
        np.maximum(var, 0.0, out=var)
        k, n, eps = len(actions), self.n_draws, self.epsilon
        draws = self._rng.standard_normal((n, k))
        draws *= self.alpha * np.sqrt(var)
        draws += mean
        winners = draws.argmax(axis=1)
        shares = np.bincount(winners, minlength=k) * ((1.0 - eps) / n)
        shares += eps / k
        probs = shares.tolist()
        u = self._rng.random()
        # u < ε explores uniformly over the eligible actions; otherwise the winner of the draw u points at
        # is played (only then is 1 - ε > 0 divided by: ε = 1 explores always)
        pick = min(int(u / eps * k), k - 1) if u < eps else int(winners[min(int((u - eps) / (1.0 - eps) * n), n - 1)])
        scores = mean.tolist()
        return self._choice(actions, scores, probs, pick, int(mean.argmax()), None, u < eps, eps / k)
